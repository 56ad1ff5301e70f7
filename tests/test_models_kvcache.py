"""The in-place key/value cache: the same logits as transformers' DynamicCache, through growth, cropping and
batch repetition, without copying the cache at every step."""
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from sdlib.models.kvcache import KVCache


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


@torch.no_grad()
def _run(model, cache):
    prompt = torch.arange(1, 21)[None]  # [1, 20]
    logits = [model(input_ids=prompt, cache=cache, use_cache=True).logits[0]]
    for i in range(30):  # decode steps, past the initial capacity
        logits.append(model(input_ids=torch.tensor([[3 + i % 7]]), cache=cache, use_cache=True).logits[0])
    cache.crop(-12)  # reject 12 positions, then verify a block of 4
    logits.append(model(input_ids=torch.tensor([[5, 6, 7, 8]]), cache=cache, use_cache=True).logits[0])
    return torch.cat(logits), cache.get_seq_length()


def test_same_logits_as_dynamic_cache_through_growth_and_crop():
    model = _model()
    ref, n_ref = _run(model, DynamicCache(config=model.config))
    small = KVCache(model.config, capacity=8)  # grows twice
    out, n = _run(model, small)
    assert n == n_ref == 20 + 30 - 12 + 4
    assert torch.equal(out, ref)
    assert small.layers[0]._keys.shape[-2] >= n  # the buffer grew to hold everything


def test_append_writes_in_place_without_reallocating():
    model = _model()
    cache = KVCache(model.config, capacity=64)
    with torch.no_grad():
        model(input_ids=torch.arange(1, 11)[None], cache=cache, use_cache=True)
        buf = cache.layers[1]._keys.data_ptr()
        for i in range(20):
            model(input_ids=torch.tensor([[4]]), cache=cache, use_cache=True)
    assert cache.layers[1]._keys.data_ptr() == buf and cache.get_seq_length() == 30
    assert cache.layers[1].keys.shape[-2] == 30  # the visible keys are the filled part only


def test_batch_repeat_matches_dynamic_cache():
    model = _model()
    caches = [DynamicCache(config=model.config), KVCache(model.config, capacity=16)]
    outs = []
    with torch.no_grad():
        for cache in caches:
            model(input_ids=torch.arange(1, 9)[None], cache=cache, use_cache=True)
            cache.batch_repeat_interleave(3)
            outs.append(model(input_ids=torch.tensor([[1, 2], [3, 4], [5, 6]]), cache=cache, use_cache=True).logits)
    assert torch.equal(outs[0], outs[1])
