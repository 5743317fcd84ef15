#!/usr/bin/env python3
"""Writes the seed corpus of the libFuzzer targets into tests/fuzz/corpus/ (committed).

Run from anywhere: python3 tests/fuzz/make_corpus.py. Standard library only. Each seed is a small,
valid input (a safetensors file, a sharded checkpoint, a config.json, an inputs file) from which
the fuzzers mutate; a few are already broken in one known way. The configs of moss's sparse
variants (corpus/config/moss-*.json) are not written here: they are config.json files saved by
moss itself (LanguageModel::save of each named variant at hidden_size 16), kept as they came.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
DATA = os.path.join(HERE, "..", "data")


def safetensors(tensors, metadata=None):
    """bytes of a safetensors file; tensors: name -> (dtype tag, shape, raw bytes)."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def f32(*v):
    return struct.pack(f"<{len(v)}f", *v)


def bf16(*v):
    return b"".join(struct.pack("<f", x)[2:] for x in v)


def f16(*v):
    return struct.pack(f"<{len(v)}e", *v)


def i64(*v):
    return struct.pack(f"<{len(v)}q", *v)


def i32(*v):
    return struct.pack(f"<{len(v)}i", *v)


def write(target, name, content):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())


def length_prefixed(*parts):
    out = b""
    for p in parts[:-1]:
        out += struct.pack("<I", len(p)) + p
    return out + parts[-1]


def main():
    mixed = {
        "a.weight": ("F32", [2, 3], f32(1, -2, 3.5, 0, 1e-3, 7)),
        "b.weight": ("BF16", [4], bf16(1, 2, -3, 0.5)),
        "c.weight": ("F16", [2, 2], f16(1, 2, 3, 4)),
        "ids": ("I64", [1, 3], i64(1, 2, 3)),
        "n": ("I32", [2], i32(5, -6)),
        "scalar": ("F32", [], f32(2.0)),
        "empty": ("F32", [0, 4], b""),
    }
    write("safetensors", "mixed.safetensors", safetensors(mixed, {"format": "pt"}))
    write("safetensors", "one.safetensors", safetensors({"x": ("F32", [1], f32(1.0))}))
    write("safetensors", "nan.safetensors", safetensors({"x": ("F32", [2], f32(float("nan"), float("inf")))}))
    write("safetensors", "overlap.safetensors",
          safetensors({"x": ("F32", [1], f32(1.0))})[:-4] + b"\x00\x00")  # truncated data section
    with open(os.path.join(DATA, "hf_mamba_tiny", "config.json"), "rb") as f:
        hf_config = f.read()

    s1 = safetensors({"backbone.embeddings.weight": ("F32", [4, 2], f32(*range(8)))})
    s2 = safetensors({"backbone.norm_f.weight": ("BF16", [2], bf16(1, 1)), "lm_head.weight": ("F32", [4, 2], f32(*range(8)))})
    index = {"metadata": {"total_size": 80},
             "weight_map": {"backbone.embeddings.weight": "model-00001-of-00002.safetensors",
                            "backbone.norm_f.weight": "model-00002-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    write("checkpoint", "two_shards", length_prefixed(json.dumps(index).encode(), s1, s2))
    bad = dict(index, weight_map=dict(index["weight_map"], **{"missing.weight": "model-00002-of-00002.safetensors"}))
    write("checkpoint", "missing_tensor", length_prefixed(json.dumps(bad).encode(), s1, s2))

    write("config", "hf_mamba_tiny.json", hf_config)
    small = {"model_type": "mamba", "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 32, "state_size": 4,
             "expand": 2, "conv_kernel": 4, "time_step_rank": "auto", "hidden_act": "silu"}
    write("config", "small.json", json.dumps(small))
    write("config", "bytes.json", json.dumps(dict(small, vocab_size=256, tokenizer="bytes")))
    write("config", "state_spaces.json", json.dumps({"d_model": 16, "n_layer": 2, "vocab_size": 32, "ssm_cfg": {}}))

    write("input_ids", "ok.safetensors", safetensors({"input_ids": ("I64", [2, 3], i64(1, 2, 3, 4, 5, 63))}))
    write("input_ids", "out_of_vocab.safetensors", safetensors({"input_ids": ("I64", [1, 2], i64(1, 64))}))
    write("input_ids", "int32.safetensors", safetensors({"input_ids": ("I32", [1, 2], i32(1, 2))}))


if __name__ == "__main__":
    main()
