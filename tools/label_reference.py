#!/usr/bin/env python3
"""Reference log-probabilities of fixed answers (labels) for cobra_session_score_labels(), computed
outside the engine: tests/data/tiny/labels/reference.json.

The model is rebuilt from the released files of tests/data/tiny the way the golden dumps were made
(../shared/testdata/README.md): timm towers (the DINOv2 position embedding resampled by timm to the
run-time grid), Pillow BICUBIC resize, the GELU MLP projector and a plain Mamba-1 with the
sequential scan, all in float64 on the float32 weights. Every stage is checked against
tests/data/tiny/golden first (the logits after the prompt to 1e-6 relative); the labels are then
scored by full recomputation of image + prompt + label tokens, not by a recurrent step:

    log p(label) = sum_k log softmax(logits after prompt + label[:k])[label[k]]

with each label tokenised alone (no leading space, no stop token). Needs PyTorch, timm,
safetensors, tokenizers, Pillow and numpy (the lent GPU machine has them; it runs on its CPU):

    python3 tools/label_reference.py --data tests/data -o tests/data/tiny/labels/reference.json
"""

import os

os.environ.setdefault("TIMM_FUSED_ATTN", "0")  # plain softmax attention, as the golden run

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

LABELS = ["yes", "no", "cat", "a red circle", "smpte color bars", "café", "blue sky",
          "two dogs playing"]
PROMPT = "<|user|>\n{question}<|endoftext|>\n<|assistant|>\n"
LOGITS_TOL = 1e-6

try:
    BICUBIC = Image.Resampling.BICUBIC
except AttributeError:  # Pillow < 9.1
    BICUBIC = Image.BICUBIC


def rel_error(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def load_tower(folder, run_size):
    """A timm VisionTransformer at the run-time size, weights loaded as timm loads a checkpoint of
    another size (absolute position embedding resampled, bicubic with antialiasing)."""
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import VisionTransformer
    cfg = json.loads((folder / "config.json").read_text())
    args = dict(cfg["model_args"], img_size=run_size)
    m = VisionTransformer(num_classes=0, **args)
    sd = load_file(str(folder / "model.safetensors"))
    if sd["pos_embed"].shape != m.pos_embed.shape:
        prefix = 0 if getattr(m, "no_embed_class", False) else m.num_prefix_tokens
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=m.patch_embed.grid_size,
                                                 num_prefix_tokens=prefix)
    m.load_state_dict(sd)
    return m.double().eval(), cfg["pretrained_cfg"]


def tower_features(m, x):
    """Output of block depth-2, no final norm, prefix tokens dropped."""
    x = m.patch_embed(x)
    x = m._pos_embed(x)
    x = m.patch_drop(x)
    x = m.norm_pre(x)
    for blk in m.blocks[:len(m.blocks) - 1]:
        x = blk(x)
    return x[:, m.num_prefix_tokens:]


def normalise(resized, pcfg):
    x = torch.from_numpy(resized).permute(2, 0, 1)[None].double() / 255.0
    mean = torch.tensor(pcfg["mean"], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(pcfg["std"], dtype=torch.float64).view(1, 3, 1, 1)
    return (x - mean) / std


def rmsnorm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def mixer(p, h):
    """mamba_ssm's Mamba-1 block on h [L, d], sequential scan (the definition)."""
    L = h.shape[0]
    x, z = (h @ p["in_proj.weight"].T).chunk(2, dim=-1)
    w = p["conv1d.weight"]                                   # [di, 1, dc]
    x = F.conv1d(x.T[None], w, p["conv1d.bias"], padding=w.shape[2] - 1, groups=w.shape[0])
    x = F.silu(x[0, :, :L].T)
    r = p["dt_proj.weight"].shape[1]
    ds = p["A_log"].shape[1]
    dt, B, C = (x @ p["x_proj.weight"].T).split([r, ds, ds], dim=-1)
    dt = F.softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"])   # threshold 20
    A = -torch.exp(p["A_log"])
    s = x.new_zeros(x.shape[1], ds)
    ys = []
    for t in range(L):
        s = torch.exp(dt[t, :, None] * A) * s + (dt[t] * x[t])[:, None] * B[t, None, :]
        ys.append((s * C[t]).sum(-1))
    y = torch.stack(ys) + x * p["D"]
    return (y * F.silu(z)) @ p["out_proj.weight"].T


class Cobra:
    def __init__(self, tiny):
        ck = torch.load(tiny / "cobra/checkpoints/latest-checkpoint.pt", map_location="cpu",
                        weights_only=True)["model"]
        self.proj = {k: v.double() for k, v in ck["projector"].items()}
        llm = {k: v.double() for k, v in ck["llm_backbone"].items()}
        self.embed = llm["llm.backbone.embedding.weight"]
        self.head = llm["llm.lm_head.weight"]
        self.norm_f = llm["llm.backbone.norm_f.weight"]
        self.layers = []
        for n in range(1 + max(int(k.split(".")[3]) for k in llm if ".layers." in k)):
            pre = f"llm.backbone.layers.{n}."
            self.layers.append({k[len(pre):]: v for k, v in llm.items() if k.startswith(pre)})
        backbone = json.loads((tiny / "cobra/config.json").read_text())["model"]["vision_backbone_id"]
        self.size = int(re.search(r"(\d+)px$", backbone).group(1))
        self.dino, self.dino_cfg = load_tower(tiny / "dino", self.size)
        self.siglip, self.siglip_cfg = load_tower(tiny / "siglip-timm", self.size)

    def projector(self, x):
        p = self.proj
        x = F.gelu(x @ p["projector.0.weight"].T + p["projector.0.bias"])
        x = F.gelu(x @ p["projector.2.weight"].T + p["projector.2.bias"])
        return x @ p["projector.4.weight"].T + p["projector.4.bias"]

    def hidden(self, h):
        for p in self.layers:
            h = h + mixer({k[len("mixer."):]: v for k, v in p.items() if k.startswith("mixer.")},
                          rmsnorm(h, p["norm.weight"]))
        return rmsnorm(h, self.norm_f)

    def logits(self, hidden):
        return hidden @ self.head.T


def check(name, got, ref, tol, checks):
    e = rel_error(got, ref)
    checks[name] = e
    print(f"{name}: relative error {e:.3g} (bound {tol:g})")
    return e <= tol


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="tests/data (tiny/ and tokenizer/)")
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args(argv)
    from tokenizers import Tokenizer
    torch.set_grad_enabled(False)
    tiny, golden = a.data / "tiny", a.data / "tiny" / "golden"
    g = lambda name: np.load(golden / f"{name}.npy")
    manifest = json.loads((golden / "manifest.json").read_text())
    tok = Tokenizer.from_file(str(a.data / "tokenizer" / "gpt-neox-20b-tokenizer.json"))
    model = Cobra(tiny)
    checks, ok = {}, True

    resized = np.asarray(Image.fromarray(g("image_rgb")).resize((model.size, model.size), BICUBIC))
    checks["resized_rgb_identical"] = bool(np.array_equal(resized, g("resized_rgb")))
    ok &= checks["resized_rgb_identical"]
    ok &= check("dino_pos_embed_resampled", model.dino.pos_embed[0], g("dino_pos_embed_resampled"),
                1e-6, checks)
    feats = []
    for name, tower, pcfg in (("dino", model.dino, model.dino_cfg),
                              ("siglip", model.siglip, model.siglip_cfg)):
        x = normalise(resized, pcfg)
        ok &= check(f"pixel_values_{name}", x[0], g(f"pixel_values_{name}"), 1e-6, checks)
        feats.append(tower_features(tower, x)[0])
        ok &= check(f"{name}_patches", feats[-1], g(f"{name}_patches"), 1e-6, checks)
    image_tokens = model.projector(torch.cat(feats, dim=1))
    ok &= check("projected", image_tokens, g("projected"), 1e-6, checks)

    question = manifest["question"]
    prompt_ids = tok.encode(PROMPT.format(question=question)).ids
    checks["prompt_ids_identical"] = prompt_ids == g("prompt_ids").tolist()
    ok &= checks["prompt_ids_identical"]
    hidden = model.hidden(torch.cat([image_tokens, model.embed[prompt_ids]]))
    ok &= check("final_hidden", hidden, g("final_hidden"), 1e-6, checks)
    ok &= check("logits_last", model.logits(hidden[-1]), g("logits_last"), LOGITS_TOL, checks)
    text = model.logits(model.hidden(model.embed[g("text_ids").tolist()])[-1])
    ok &= check("text_logits_last", text, g("text_logits_last"), LOGITS_TOL, checks)

    n_prompt = len(image_tokens) + len(prompt_ids)
    labels = []
    for label in LABELS:
        ids = tok.encode(label).ids
        seq = torch.cat([image_tokens, model.embed[prompt_ids + ids[:-1]]])
        logp = torch.log_softmax(model.logits(model.hidden(seq)[n_prompt - 1:]), dim=-1)
        lp = float(sum(logp[k, t] for k, t in enumerate(ids)))
        labels.append({"text": label, "ids": ids, "log_prob": lp})
        print(f"{label!r}: ids {ids} log p {lp:.10g}")

    out = {"question": question, "set": "tiny", "n_labels": len(labels),
           "reference": {"torch": torch.__version__, "precision": "float64 math on the float32 "
                         "weights; labels by full recomputation of image + prompt + label"},
           "checks_against_golden": checks, "labels": labels}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    if not ok:
        sys.exit("label_reference: the model does not reproduce tests/data/tiny/golden (see above)")


if __name__ == "__main__":
    main()
