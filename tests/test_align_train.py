"""Training of adapters and heads: what each row is compared with (next-position heads never against their own
input row), resumption after a crash to the weights of an uninterrupted run, and reuse of a finished run."""
import pytest
import torch
from safetensors.torch import load_file

from sdlib.align import heads, train as at
from sdlib.align.store import FeatureStore, ShardWriter, merge_manifests

HD, HT, V = 6, 8, 12


def make_store(root, n, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(HD, HT, generator=g)
    with ShardWriter(root, config={}, fingerprint="t", shard_size=8) as wr:
        for i in range(n):
            k = 4 + i % 5
            d = torch.randn(k, HD, generator=g)
            f = d @ w  # [k, HT]: the target rows, a linear function of the drafter's
            wr.add(f"s{i}", {"tokens": torch.randint(0, V, (k,), generator=g), "drafter": d, "target": f,
                             "target_layers": torch.stack([f, f, f], 1)})
    merge_manifests(root)
    return FeatureStore(root)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    g = torch.Generator().manual_seed(0)
    target = at.FrozenTarget(torch.randn(V, HT, generator=g), None, torch.randn(V, HT, generator=g))
    return make_store(root / "train", 40, 1), make_store(root / "val", 12, 1), target


class Echo(torch.nn.Module):
    """A 'head' that returns the target row it is given (what a same-position comparison would reward)."""

    def forward(self, features, embeds, *, mask=None):
        return features


def test_next_position_heads_are_scored_against_the_following_row(stores):
    train, _, target = stores
    batch = next(at.batches(train, 4, ("target",), shuffle=False, seed=0))
    cfg = at.AdapterTrainConfig(ce_weight=0.0)
    y = [batch["target"]]
    _, same = at.losses(y, batch, 0, target, cfg)
    _, nxt = at.losses(y, batch, 1, target, cfg)
    assert same["cos"] == pytest.approx(1.0)  # the row it was given
    assert nxt["cos"] < 0.5  # the row it must predict: a different state
    # the rows compared at shift 1 exclude each sequence's first target row: one fewer row per sequence
    assert nxt["rows"] == same["rows"] - 4


@pytest.mark.parametrize("precision", at.PRECISIONS)
def test_every_zoo_member_trains_and_its_checkpoint_reloads(stores, tmp_path, precision):
    train, val, target = stores
    cfg = at.AdapterTrainConfig(epochs=2, batch_size=8, rollout_steps=2, precision=precision)
    for name in at.ZOO:
        module, mcfg = at.build(name, HD, HT, 3)
        res = at.train_adapter(name, module, train, val, target, tmp_path, cfg, mcfg, progress=False,
                               log=lambda *_: None)
        assert res["epochs_run"] == 2 and res["params"] == heads.param_count(module)
        back = heads.load_module(tmp_path / name / "best.safetensors")
        assert type(back) is type(module)
        again = at.train_adapter(name, module, train, val, target, tmp_path, cfg, mcfg, progress=False)
        assert again["cached"] is True


def test_a_crashed_run_resumes_to_the_weights_of_an_uninterrupted_one(stores, tmp_path):
    train, val, target = stores
    cfg = at.AdapterTrainConfig(epochs=3, batch_size=8, patience=5)
    torch.manual_seed(5)
    ref, mcfg = at.build("L4", HD, HT)
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    at.train_adapter("L4", ref, train, val, target, tmp_path / "ref", cfg, mcfg, progress=False, log=lambda *_: None)

    class Crash(Exception):
        pass

    def crash_after_epoch_2(msg):
        if msg.startswith("L4 epoch 2"):
            raise Crash

    m, _ = at.build("L4", HD, HT)
    m.load_state_dict(init)
    with pytest.raises(Crash):
        at.train_adapter("L4", m, train, val, target, tmp_path / "run", cfg, mcfg, progress=False,
                         log=crash_after_epoch_2)
    m2, _ = at.build("L4", HD, HT)  # a fresh process: new module, state from disk
    res = at.train_adapter("L4", m2, train, val, target, tmp_path / "run", cfg, mcfg, progress=False,
                           log=lambda *_: None)
    assert res["epochs_run"] == 3
    a, b = load_file(str(tmp_path / "ref" / "L4" / "best.safetensors")), load_file(
        str(tmp_path / "run" / "L4" / "best.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_training_keeps_float32_weights_and_validates_in_float32(stores, tmp_path):
    train, val, target = stores
    cfg = at.AdapterTrainConfig(epochs=1, batch_size=8, precision="bf16")
    module, mcfg = at.build("L4", HD, HT, 3)
    res = at.train_adapter("L4", module, train, val, target, tmp_path, cfg, mcfg, progress=False, log=lambda *_: None)
    saved = load_file(str(tmp_path / "L4" / "best.safetensors"))
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
    # the kept epoch's validation loss is the float32 one of the saved weights
    reloaded = heads.load_module(tmp_path / "L4" / "best.safetensors")
    v = at.validate(reloaded, val, target, cfg, ("drafter", "target"), 1)
    assert v["loss"] == pytest.approx(res["best_val"], rel=1e-6)
    # the training forward pass did run in bfloat16: its predictions differ from float32 ones, by bf16 rounding
    batch = next(at.batches(train, 8, ("drafter", "target"), shuffle=False, seed=0))
    reloaded.eval()
    with torch.no_grad():
        p32, p16 = at.forward(reloaded, batch, target)[0], at.forward(reloaded, batch, target, precision="bf16")[0]
    assert p16.dtype == torch.float32 and not torch.equal(p32, p16)
    assert float((p32 - p16).abs().max()) < 0.1 * float(p32.abs().max())


def test_precision_is_checked_and_auto_follows_the_cpu_flags(tmp_path):
    with pytest.raises(ValueError, match="precision"):
        at.AdapterTrainConfig(precision="fp16")
    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("flags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    plain.write_text("flags\t\t: fpu sse avx2\n")
    assert at.cpu_has_bf16_matmul(amx) and not at.cpu_has_bf16_matmul(plain)
    assert not at.cpu_has_bf16_matmul(tmp_path / "missing")
    assert at.resolve_precision("fp32") == "fp32" and at.resolve_precision("auto") in at.PRECISIONS
