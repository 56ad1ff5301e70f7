"""Stage 02's token track: a causal TokenAdapter, its training, and its score against the right token (t + 1) beside
the original's comparison with token t."""
import pytest
import torch
from torch import nn

from sdlib.align import tokens as tk


class Oracle(nn.Module):
    """Logits that put all mass on a fixed answer's next token: row t -> answer[t + 1] (the last row -> answer[0])."""

    def __init__(self, answers: dict[tuple, torch.Tensor], vocab: int) -> None:
        super().__init__()
        self.answers, self.vocab = answers, vocab

    def forward(self, d):
        t = self.answers[tuple(d[0].tolist())]
        nxt = torch.roll(t, -1)
        return nn.functional.one_hot(nxt, self.vocab).float()[None] * 10


def test_token_adapter_is_causal():
    torch.manual_seed(0)
    m = tk.TokenAdapter(20, 30, hidden=16, layers=2, heads=2, max_len=16, dropout=0.0).eval()
    x = torch.randint(0, 20, (2, 10))
    y = x.clone()
    y[:, 6:] = torch.randint(0, 20, (2, 4))
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5)
    assert not torch.allclose(a[:, 6], b[:, 6])


def test_scores_against_the_next_token_and_the_same_position_by_hand():
    # answer 1: target 3 3 4 5, drafter 3 9 9 9; answer 2: target 7 1 1, drafter 1 1 1
    t1, d1 = torch.tensor([3, 3, 4, 5]), torch.tensor([3, 9, 9, 9])
    t2, d2 = torch.tensor([7, 1, 1]), torch.tensor([1, 1, 1])
    oracle = Oracle({tuple(d1.tolist()): t1, tuple(d2.tolist()): t2}, 10)
    s = tk.score_token_adapter(oracle, ([d1, d2], [t1, t2]))
    # the oracle predicts t+1 exactly: every shifted row right, consecutive = n - 1 per answer
    assert s["shifted_top1"] == 1.0 and s["shifted_consecutive"] == (3 + 2) / 2
    # unshifted: predictions 3 4 5 vs targets 3 3 4 -> [1, 0, 0]; 1 1 vs 7 1 -> [0, 1]: 2 of 5, consecutive 1 and 0
    assert s["unshifted_top1"] == pytest.approx(2 / 5) and s["unshifted_consecutive"] == 0.5
    assert s["zero_consecutive_share_unshifted"] == 0.5 and s["zero_consecutive_share_shifted"] == 0.0
    # the drafter's own tokens: 3 9 9 9 vs 3 3 4 5 -> 1 of 4; 1 1 1 vs 7 1 1 -> 2 of 3
    assert s["baseline_same_position"] == pytest.approx(3 / 7) and s["answers"] == 2 and s["rows"] == 5


def test_training_learns_a_next_token_rule_and_keeps_the_best_validation_weights():
    # target token t + 1 = (drafter token t * 3) % 11: learnable from the drafter's tokens <= t only
    g = torch.Generator().manual_seed(1)

    def pairs(n):
        ds = [torch.randint(0, 11, (8,), generator=g) for _ in range(n)]
        ts = [torch.cat([torch.tensor([0]), (d[:-1] * 3) % 11]) for d in ds]
        return ds, ts

    train, val, test = pairs(256), pairs(64), pairs(64)
    m = tk.TokenAdapter(11, 11, hidden=32, layers=1, heads=2, max_len=16, dropout=0.0)
    fit = tk.train_token_adapter(m, train, val, tk.TokenTrainConfig(epochs=12, batch_size=32, lr=3e-3, patience=12),
                                 progress=False, log=lambda *_: None)
    assert fit["history"][-1]["train_loss"] < fit["history"][0]["train_loss"]
    assert fit["best_val_loss"] == min(h["val_loss"] for h in fit["history"])
    s = tk.score_token_adapter(m, test)
    assert s["shifted_top1"] > 0.95  # the rule is learnt ...
    assert s["unshifted_top1"] < 0.3  # ... and compared with the same position it looks like failure
