#!/usr/bin/env python3
"""Write a random-weight Cobra model with the real cobra+3b shapes, for tools/cobra-bench.

The file is assembled by the converter's own code (cobra_convert.assemble) from synthetic sources
in the released checkpoints' layouts, so it has exactly the keys, tensors and types a converted
model has; only depth can be shrunk. The tokenizer is the real GPT-NeoX one from tests/data.
Weights are uniform with the variance of a default init (1/fan_in), so activations stay finite;
the embedding row of <|endoftext|> is zero so greedy decoding never stops early.
"""

import argparse
import os
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import cobra_convert as cc  # noqa: E402

TOKENIZER = ROOT / "tests" / "data" / "tokenizer" / "gpt-neox-20b-tokenizer.json"
IMAGE_SIZE = 384
# mamba-2.8b-zephyr, the Cobra 3B language model
D_MODEL, N_LAYER, D_STATE, D_CONV, VOCAB = 2560, 64, 16, 4, 50280
D_INNER, DT_RANK = 2 * D_MODEL, D_MODEL // 16


class RandomTensor(cc.SourceTensor):
    """A source tensor whose values are drawn when the writer asks for them (seeded by name)."""

    def __init__(self, name, shape, make):
        super().__init__(None, 0, "F32", shape)
        self.name, self.make = name, make

    def numpy(self):
        rng = np.random.default_rng(zlib.crc32(self.name.encode()))
        return self.make(rng, self.shape).astype(np.float32, copy=False)


def linear(rng, shape):
    bound = np.float32(np.sqrt(3.0 / shape[-1]))
    return rng.random(shape, dtype=np.float32) * (2 * bound) - bound


def const(value):
    return lambda rng, shape: np.full(shape, value, dtype=np.float32)


def small(rng, shape):
    return (rng.random(shape, dtype=np.float32) - np.float32(0.5)) * np.float32(0.04)


def weights(specs, source):
    return cc.Weights({n: RandomTensor(n, s, m) for n, (s, m) in specs.items()}, source)


def tower(arch, depth):
    """A timm tower of architecture `arch` with `depth` blocks."""
    hp = dict(cc.KNOWN_TOWERS[arch], depth=depth)
    C, P = hp["embed_dim"], hp["patch_size"]
    F = int(C * hp["mlp_ratio"])
    grid = IMAGE_SIZE // P
    specs = {"patch_embed.proj.weight": ((C, 3, P, P), linear),
             "patch_embed.proj.bias": ((C,), small),
             "pos_embed": ((1, grid * grid, C), small)}
    if hp["class_token"]:
        specs["cls_token"] = ((1, 1, C), small)
    if hp["reg_tokens"]:
        specs["reg_token"] = ((1, hp["reg_tokens"], C), small)
    layer_scale = arch.startswith("vit_large_patch14_reg4_dinov2")
    for i in range(depth):
        b = f"blocks.{i}."
        specs.update({b + "norm1.weight": ((C,), const(1)), b + "norm1.bias": ((C,), small),
                      b + "attn.qkv.weight": ((3 * C, C), linear), b + "attn.qkv.bias": ((3 * C,), small),
                      b + "attn.proj.weight": ((C, C), linear), b + "attn.proj.bias": ((C,), small),
                      b + "norm2.weight": ((C,), const(1)), b + "norm2.bias": ((C,), small),
                      b + "mlp.fc1.weight": ((F, C), linear), b + "mlp.fc1.bias": ((F,), small),
                      b + "mlp.fc2.weight": ((C, F), linear), b + "mlp.fc2.bias": ((C,), small)})
        if layer_scale:
            specs.update({b + "ls1.gamma": ((C,), const(0.1)), b + "ls2.gamma": ((C,), const(0.1))})
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    return cc.Tower(arch, hp, mean, std, weights(specs, f"random {arch}"))


def projector(fused, d):
    h = 4 * fused
    specs = {}
    for idx, (rows, cols) in zip((0, 2, 4), ((h, fused), (d, h), (d, d))):
        specs[f"projector.{idx}.weight"] = ((rows, cols), linear)
        specs[f"projector.{idx}.bias"] = ((rows,), small)
    return weights(specs, "random projector")


def embedding(eos):
    def make(rng, shape):
        e = rng.random(shape, dtype=np.float32) * np.float32(0.2) - np.float32(0.1)
        e[eos] = 0
        return e
    return make


def a_log(rng, shape):
    # S4D-real init, as mamba_ssm: A = -(1..d_state)
    return np.broadcast_to(np.log(np.arange(1, shape[1] + 1, dtype=np.float32)), shape).copy()


def dt_bias(rng, shape):
    # inverse softplus of dt log-uniform in [1e-3, 1e-1], as mamba_ssm
    dt = np.exp(rng.random(shape) * (np.log(0.1) - np.log(1e-3)) + np.log(1e-3))
    return dt + np.log(-np.expm1(-dt))


def language_model(n_layer, eos):
    d, di, ds, dc, r = D_MODEL, D_INNER, D_STATE, D_CONV, DT_RANK
    specs = {"backbone.embedding.weight": ((VOCAB, d), embedding(eos)),
             "backbone.norm_f.weight": ((d,), const(1))}
    for i in range(n_layer):
        p, m = f"backbone.layers.{i}.", f"backbone.layers.{i}.mixer."
        specs.update({p + "norm.weight": ((d,), const(1)),
                      m + "in_proj.weight": ((2 * di, d), linear),
                      m + "conv1d.weight": ((di, 1, dc), linear),
                      m + "conv1d.bias": ((di,), small),
                      m + "x_proj.weight": ((r + 2 * ds, di), linear),
                      m + "dt_proj.weight": ((di, r), linear),
                      m + "dt_proj.bias": ((di,), dt_bias),
                      m + "A_log": ((di, ds), a_log),
                      m + "D": ((di,), const(1)),
                      m + "out_proj.weight": ((d, di), linear)})
    return weights(specs, "random mamba")


def sources(n_layer, vision_blocks):
    """Synthetic sources; vision_blocks (blocks computed per tower) None keeps the real depths."""
    dino_arch, siglip_arch = "vit_large_patch14_reg4_dinov2", "vit_so400m_patch14_siglip_384"
    depth = lambda arch: (cc.KNOWN_TOWERS[arch]["depth"] if vision_blocks is None
                          else vision_blocks + 1)   # the feature layer is the penultimate block
    towers = {"dino": tower(dino_arch, depth(dino_arch)),
              "siglip": tower(siglip_arch, depth(siglip_arch))}
    tokenizer = cc.tokenizer_metadata(TOKENIZER)
    eos = tokenizer[3]
    cfg = {"model_id": "cobra+3b-random", "arch_specifier": "no-align+" + cc.PROJECTOR_TYPE,
           "vision_backbone_id": f"dinosiglip-vit-so-{IMAGE_SIZE}px",
           "llm_backbone_id": "mamba-2.8b-zephyr", "image_resize_strategy": cc.RESIZE_STRATEGY,
           "llm_max_length": 2048, "image_size": IMAGE_SIZE}
    fused = sum(t.width for t in towers.values())
    return cc.Sources(cfg, towers, projector(fused, D_MODEL), language_model(n_layer, eos),
                      tokenizer)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", choices=sorted(cc.FILE_TYPES), default="q8_0")
    ap.add_argument("--n-layer", type=int, default=N_LAYER)
    ap.add_argument("--vision-depth", type=int, default=None,
                    help="blocks computed per tower (default: the real 23 and 26)")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    if args.n_layer < 1 or (args.vision_depth is not None and args.vision_depth < 1):
        ap.error("depths must be at least 1")
    out = Path(args.output)
    partial = out.with_name(out.name + ".partial")
    writer = cc.assemble(sources(args.n_layer, args.vision_depth), args.type, verbose=False)
    writer.write(partial)
    os.replace(partial, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
