#!/usr/bin/env python3
"""Train the small demo Cobra (docs/demo-model.md) and save it in the released file layouts.

Architecture exactly as Cobra's (docs/cobra-spec.md), only smaller: timm VisionTransformer towers
(DINOv2 with 4 registers + LayerScale, SigLIP without class token, "map" pool head unused),
features of block depth-2, no final norm, prefix dropped, concatenated DINOv2 first; the fused
GELU MLP projector; a Mamba-1 LM in plain PyTorch with mamba_ssm's parameter names, the real
GPT-NeoX tokenizer (50280 embedding rows, tied head) and the zephyr template.

Needs PyTorch, timm, tokenizers, safetensors and Pillow (the lent GPU machine has them):

  python3 tools/train_demo.py --bank build-demo/bank.npz --out OUT [--steps N] [--smoke]

writes OUT/cobra/{config.json,checkpoints/latest-checkpoint.pt}, OUT/dino/{config.json,
model.safetensors}, OUT/siglip/{config.json,model.safetensors}, OUT/reference_answers.json
(greedy answers of the saved weights, float64, on tests/data/demo/heldout.*),
OUT/reference_labels.json (the log-probability of each candidate answer of the held-out questions
that have `labels`) and OUT/train_log.json.
"""

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("TIMM_FUSED_ATTN", "0")      # plain softmax attention: deterministic backward

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_data as dd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "tests" / "data" / "tokenizer" / "gpt-neox-20b-tokenizer.json"
HELDOUT = ROOT / "tests" / "data" / "demo"

IMAGE_SIZE = 112                      # grid 8 x 8 = 64 image tokens
DINO_ARGS = {"img_size": IMAGE_SIZE, "patch_size": 14, "embed_dim": 96, "depth": 5,
             "num_heads": 3, "mlp_ratio": 4.0, "init_values": 0.1, "reg_tokens": 4,
             "no_embed_class": True}
SIGLIP_ARGS = {"img_size": IMAGE_SIZE, "patch_size": 14, "embed_dim": 96, "depth": 5,
               "num_heads": 3, "mlp_ratio": 4.0, "class_token": False, "global_pool": "map"}
D_MODEL, N_LAYER, D_STATE, D_CONV, EXPAND = 64, 4, 16, 4, 2
DT_RANK = math.ceil(D_MODEL / 16)
VOCAB = 50280                         # GPT-NeoX's 50277 tokens padded to a multiple of 8
EOS = 0
PROMPT = "<|user|>\n{question}<|endoftext|>\n<|assistant|>\n"
DINO_MEAN, DINO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
N_IMAGE_TOKENS = (IMAGE_SIZE // 14) ** 2

try:
    BICUBIC = Image.Resampling.BICUBIC
except AttributeError:      # Pillow < 9.1
    BICUBIC = Image.BICUBIC


def resize(img):
    """Cobra's resize-naive: Pillow BICUBIC squash to S x S (what the engine ports bit-exactly)."""
    return np.asarray(Image.fromarray(img).resize((IMAGE_SIZE, IMAGE_SIZE), BICUBIC))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

def make_towers():
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(num_classes=0, **DINO_ARGS), VisionTransformer(num_classes=0, **SIGLIP_ARGS)


def tower_features(m, x):
    """Output of block depth-2, no final norm, prefix tokens dropped (Cobra's
    get_intermediate_layers(n={depth-2}))."""
    x = m.patch_embed(x)
    x = m._pos_embed(x)
    x = m.patch_drop(x)
    x = m.norm_pre(x)
    for blk in m.blocks[:len(m.blocks) - 1]:
        x = blk(x)
    return x[:, m.num_prefix_tokens:]


class FusedMLPProjector(nn.Module):
    def __init__(self, fused_dim, d_model):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(fused_dim, 4 * fused_dim), nn.GELU(),
                                       nn.Linear(4 * fused_dim, d_model), nn.GELU(),
                                       nn.Linear(d_model, d_model))

    def forward(self, x):
        return self.projector(x)


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def scan_sequential(x, dt, A, B, C):
    """Mamba-1 selective scan, one step at a time (the definition). x, dt: [b, L, d];
    A: [d, n]; B, C: [b, L, n] -> y [b, L, d] (without the D skip)."""
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, 1)


def scan_chunked(x, dt, A, B, C, T=8):
    """The same scan, quadratic inside chunks of T steps and recurrent across chunks."""
    b, L, d = x.shape
    n = A.shape[1]
    pad = (-L) % T
    dA = dt[..., None] * A                                   # [b, L, d, n] log decays
    u = (dt * x)[..., None] * B[:, :, None, :]               # [b, L, d, n] inputs
    Cp = C
    if pad:
        dA = F.pad(dA, (0, 0, 0, 0, 0, pad))
        u = F.pad(u, (0, 0, 0, 0, 0, pad))
        Cp = F.pad(C, (0, 0, 0, pad))
    nc = (L + pad) // T
    dA = dA.reshape(b, nc, T, d, n)
    u = u.reshape(b, nc, T, d, n)
    S = dA.cumsum(2)
    diff = S[:, :, :, None] - S[:, :, None, :]               # [b, nc, t, s, d, n]
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[:, :, None, None]
    E = torch.exp(torch.where(causal, diff, torch.full_like(diff, -math.inf)))
    h = (E * u[:, :, None]).sum(3)                           # chunk-local states [b, nc, T, d, n]
    decay = torch.exp(S[:, :, -1])
    carry, H = [], torch.zeros_like(h[:, 0, 0])
    for c in range(nc):
        carry.append(H)
        H = decay[:, c] * H + h[:, c, -1]
    h = h + torch.exp(S) * torch.stack(carry, 1)[:, :, None]
    y = (h * Cp.reshape(b, nc, T, 1, n)).sum(-1)
    return y.reshape(b, nc * T, d)[:, :L]


class Mixer(nn.Module):
    """mamba_ssm's Mamba (v1) block, parameter names and init included."""

    def __init__(self, d_model, d_state, d_conv, expand, dt_rank):
        super().__init__()
        di = expand * d_model
        self.d_state, self.dt_rank = d_state, dt_rank
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(di, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, di, bias=True)
        std = dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(di) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(di, 1)))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d_model, bias=False)

    def forward(self, hs, scan=scan_chunked):
        L = hs.shape[1]
        x, z = self.in_proj(hs).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2))
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))                     # threshold 20, as mamba_ssm
        A = -torch.exp(self.A_log)
        y = scan(x, dt, A, B, C) + x * self.D
        return self.out_proj(y * F.silu(z))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = RMSNorm(D_MODEL)
        self.mixer = Mixer(D_MODEL, D_STATE, D_CONV, EXPAND, DT_RANK)


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, D_MODEL)
        self.layers = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.norm_f = RMSNorm(D_MODEL)


class MambaLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        for layer in self.backbone.layers:      # mamba_ssm's prenorm residual rescale
            with torch.no_grad():
                nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
                layer.mixer.out_proj.weight /= math.sqrt(N_LAYER)

    def forward(self, h, scan=scan_chunked):
        for layer in self.backbone.layers:
            h = h + layer.mixer(layer.norm(h), scan)
        return self.backbone.norm_f(h)

    def logits(self, h):
        return h @ self.backbone.embedding.weight.t()        # tied lm_head


class Cobra(nn.Module):
    def __init__(self):
        super().__init__()
        self.dino, self.siglip = make_towers()
        self.projector = FusedMLPProjector(DINO_ARGS["embed_dim"] + SIGLIP_ARGS["embed_dim"], D_MODEL)
        self.llm = MambaLM()
        for name, mean, std in (("dino", DINO_MEAN, DINO_STD), ("siglip", SIGLIP_MEAN, SIGLIP_STD)):
            self.register_buffer(name + "_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(name + "_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def image_tokens(self, images):
        """images: uint8 [b, S, S, 3] (already Pillow-resized) -> [b, grid^2, d_model]."""
        x = images.permute(0, 3, 1, 2).to(self.dino_mean.dtype) / 255.0
        fd = tower_features(self.dino, (x - self.dino_mean) / self.dino_std)
        fs = tower_features(self.siglip, (x - self.siglip_mean) / self.siglip_std)
        return self.projector(torch.cat([fd, fs], dim=2))

    def hidden(self, images, ids, scan=scan_chunked):
        h = torch.cat([self.image_tokens(images), self.llm.backbone.embedding(ids)], dim=1)
        return self.llm(h, scan)


# ---------------------------------------------------------------------------------------------
# Saving in the released layouts
# ---------------------------------------------------------------------------------------------

def tower_config(arch, model_args, mean, std, global_pool):
    return {"architecture": arch, "num_classes": 0, "num_features": model_args["embed_dim"],
            "global_pool": global_pool, "model_args": model_args,
            "pretrained_cfg": {"tag": "demo", "input_size": [3, IMAGE_SIZE, IMAGE_SIZE],
                               "fixed_input_size": True, "interpolation": "bicubic",
                               "crop_pct": 1.0, "crop_mode": "center", "mean": list(mean),
                               "std": list(std), "num_classes": 0,
                               "first_conv": "patch_embed.proj", "classifier": "head"}}


def save_released(model, out):
    from safetensors.torch import save_file
    out = Path(out)
    for d in ("cobra/checkpoints", "dino", "siglip"):
        (out / d).mkdir(parents=True, exist_ok=True)
    cfg = {"model": {"model_id": "cobra-demo", "arch_specifier": "no-align+fused-gelu-mlp",
                     "vision_backbone_id": f"dinosiglip-vit-demo-{IMAGE_SIZE}px",
                     "llm_backbone_id": "mamba-demo-zephyr", "image_resize_strategy": "resize-naive",
                     "llm_max_length": 2048}}
    (out / "cobra/config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    cpu = lambda t: t.detach().to("cpu", torch.float32).contiguous()
    projector = OrderedDict((k, cpu(v)) for k, v in model.projector.state_dict().items())
    llm = OrderedDict(("llm." + k, cpu(v)) for k, v in model.llm.state_dict().items())
    llm["llm.lm_head.weight"] = llm["llm.backbone.embedding.weight"]   # tied: one storage
    torch.save({"model": {"projector": projector, "llm_backbone": llm}},
               out / "cobra/checkpoints/latest-checkpoint.pt")
    for name, m, arch, args, mean, std, pool in (
            ("dino", model.dino, "vit_demo_patch14_reg4_dinov2", DINO_ARGS, DINO_MEAN, DINO_STD, "token"),
            ("siglip", model.siglip, f"vit_demo_patch14_siglip_{IMAGE_SIZE}", SIGLIP_ARGS,
             SIGLIP_MEAN, SIGLIP_STD, "map")):
        save_file({k: cpu(v) for k, v in m.state_dict().items()}, str(out / name / "model.safetensors"))
        (out / name / "config.json").write_text(
            json.dumps(tower_config(arch, args, mean, std, pool), indent=2) + "\n")


def load_released(out, device, dtype):
    """A fresh model from the saved files (what the converter reads), in `dtype`."""
    from safetensors.torch import load_file
    out = Path(out)
    model = Cobra()
    ck = torch.load(out / "cobra/checkpoints/latest-checkpoint.pt", map_location="cpu", weights_only=True)
    model.projector.load_state_dict(ck["model"]["projector"])
    llm = {k[len("llm."):]: v for k, v in ck["model"]["llm_backbone"].items()}
    assert torch.equal(llm.pop("lm_head.weight"), llm["backbone.embedding.weight"])
    model.llm.load_state_dict(llm)
    model.dino.load_state_dict(load_file(str(out / "dino/model.safetensors")))
    model.siglip.load_state_dict(load_file(str(out / "siglip/model.safetensors")))
    return model.to(device=device, dtype=dtype).eval()


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def _render_resized(p):
    return resize(dd.render_scene(p))


def _render_multi_and_region(p):
    """A multi-object scene and the crop of one of its objects (the region training uses)."""
    img, objs = dd.render_multi(p)
    box = dd.region_box(objs[p["crop"]]["tight"], p["margins"], p["width"], p["height"])
    return resize(img), resize(dd.crop(img, box)), dd.region_params(p, objs[p["crop"]])


def make_scenes(n, n_multi, seed, workers):
    """Pre-rendered training scenes: n one-kind scenes, n_multi multi-object scenes and the
    region crop of each, as ({source: uint8 [m, S, S, 3]}, {source: [description, ...]})."""
    rng = np.random.default_rng(seed)
    params = [dd.scene_params(rng) for _ in range(n)]
    multi = [dd.multi_params(rng) for _ in range(n_multi)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        images = pool.map(_render_resized, params, chunksize=64)
        rendered = pool.map(_render_multi_and_region, multi, chunksize=64)
    return ({"scene": np.stack(images), "multi": np.stack([r[0] for r in rendered]),
             "region": np.stack([r[1] for r in rendered])},
            {"scene": params, "multi": multi, "region": [r[2] for r in rendered]})


def load_bank(path):
    z, index = dd.load_npz_index(path)
    images = np.stack([resize(z[e["key"]]) for e in index])
    return images, [e["pattern"] for e in index]


class Tokens:
    def __init__(self):
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(str(TOKENIZER))
        self.cache = {}

    def prompt(self, question):
        key = ("q", question)
        if key not in self.cache:
            self.cache[key] = self.tok.encode(PROMPT.format(question=question)).ids
        return self.cache[key]

    def answer(self, text):
        key = ("a", text)
        if key not in self.cache:
            self.cache[key] = self.tok.encode(text).ids + [EOS]
        return self.cache[key]

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=True).strip()


def make_batch(tokens, pairs, device):
    """ids [b, L] (right-padded), and the flat (row, text position, target) of every answer
    token: position j predicts token j+1."""
    seqs, rows, cols, targets = [], [], [], []
    for i, (q, a) in enumerate(pairs):
        p, ans = tokens.prompt(q), tokens.answer(a)
        full = p + ans
        seqs.append(full[:-1])
        for j in range(len(p) - 1, len(full) - 1):
            rows.append(i)
            cols.append(j)
            targets.append(full[j + 1])
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    t = lambda v: torch.tensor(v, dtype=torch.long, device=device)
    return ids.to(device), t(rows), t(cols), t(targets)


# ---------------------------------------------------------------------------------------------
# Greedy answers (reference for the engine)
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def greedy_answers(model, tokens, images, questions, max_new=32, scan=scan_chunked):
    """Greedy decoding by full recomputation, batched over items that share the question."""
    device = next(model.parameters()).device
    results = [None] * len(questions)
    groups = {}
    for i, q in enumerate(questions):
        groups.setdefault(q, []).append(i)
    for q, idx in groups.items():
        for start in range(0, len(idx), 128):
            part = idx[start:start + 128]
            img = torch.as_tensor(np.stack([images[i] for i in part]), device=device)
            img_tok = model.image_tokens(img)
            ids = torch.tensor([tokens.prompt(q)] * len(part), device=device)
            out = [[] for _ in part]
            done = [False] * len(part)
            margins = [math.inf] * len(part)
            for _ in range(max_new):
                h = torch.cat([img_tok, model.llm.backbone.embedding(ids)], 1)
                logits = model.llm.logits(model.llm(h, scan)[:, -1])
                top2 = logits.topk(2, dim=-1)
                nxt = top2.indices[:, 0]
                for k in range(len(part)):
                    if not done[k]:
                        margins[k] = min(margins[k], float(top2.values[k, 0] - top2.values[k, 1]))
                        out[k].append(int(nxt[k]))
                        done[k] = int(nxt[k]) == EOS
                if all(done):
                    break
                ids = torch.cat([ids, nxt[:, None]], 1)
            for k, i in enumerate(part):
                gen = [t for t in out[k] if t != EOS]
                results[i] = {"ids": out[k], "text": tokens.decode(gen), "min_margin": margins[k]}
    return results


@torch.no_grad()
def label_log_probs(model, tokens, image, question, labels):
    """log P(label | image, prompt) of each label: its tokens alone (no stop token), each
    predicted after the prompt and the label's earlier tokens; the sum of their log-softmax."""
    device = next(model.parameters()).device
    prompt = tokens.prompt(question)
    seqs = [tokens.tok.encode(lab).ids for lab in labels]
    L = len(prompt) + max(len(s) for s in seqs) - 1
    ids = torch.zeros(len(labels), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        full = prompt + s
        ids[i, :len(full) - 1] = torch.tensor(full[:-1])
    img_tok = model.image_tokens(torch.as_tensor(np.array(image[None]), device=device)).expand(
        len(labels), -1, -1)
    h = torch.cat([img_tok, model.llm.backbone.embedding(ids.to(device))], 1)
    logp = torch.log_softmax(model.llm.logits(model.llm(h)), -1)
    return [sum(float(logp[i, N_IMAGE_TOKENS + len(prompt) - 1 + j, t]) for j, t in enumerate(s))
            for i, s in enumerate(seqs)]


def score(groups):
    """{group: [right, total]} -> {group: fraction}."""
    return {k: v[0] / v[1] for k, v in sorted(groups.items())}


def accuracy_group(kind, item):
    """Held-out accuracy is reported per kind of image for the trained phrasings, and for the
    held-out phrasings (never trained) apart."""
    return "heldout-phrasing" if item["phrasing"] == "heldout" else kind


def reference_answers(out, tokens, device, log, limit=None):
    z = np.load(HELDOUT / "heldout.npz")
    meta = json.loads((HELDOUT / "heldout.json").read_text())
    items = meta["items"][::len(meta["items"]) // limit] if limit else meta["items"]
    resized = {im["key"]: resize(z[im["key"]]) for im in meta["images"]}
    model = load_released(out, device, torch.float64)
    res = greedy_answers(model, tokens, [resized[it["image"]] for it in items],
                         [it["question"] for it in items])
    kinds = {im["key"]: im["kind"] for im in meta["images"]}
    rows, groups, qtypes = [], {}, {}
    for it, r in zip(items, res):
        ok = r["text"] == it["answer"]
        for d, k in ((groups, accuracy_group(kinds[it["image"]], it)),
                     (qtypes, f"{kinds[it['image']]}/{it['qtype']}")):
            s = d.setdefault(k, [0, 0])
            s[0] += ok
            s[1] += 1
        rows.append(dict(it, torch_answer=r["text"], torch_ids=r["ids"],
                         min_margin=round(r["min_margin"], 4), correct=ok))
    doc = {"note": "greedy answers of the PyTorch model (float64 math on the saved float32 "
                   "weights, Pillow BICUBIC resize) on tests/data/demo/heldout.*; accuracy per "
                   "kind of image (trained phrasings) and for the held-out phrasings",
           "image_size": IMAGE_SIZE, "accuracy": score(groups), "counts": groups,
           "accuracy_by_question": score(qtypes), "items": rows}
    (Path(out) / "reference_answers.json").write_text(json.dumps(doc, indent=1) + "\n")
    log["heldout_accuracy"] = doc["accuracy"]
    log["heldout_counts"] = groups
    log["heldout_accuracy_by_question"] = doc["accuracy_by_question"]
    log["heldout_min_margin"] = min(r["min_margin"] for r in rows)
    wrong = [(r["question"], r["answer"], r["torch_answer"]) for r in rows if not r["correct"]]
    print(f"held-out accuracy {doc['accuracy']} counts {groups}; by question "
          f"{doc['accuracy_by_question']}; smallest margin {log['heldout_min_margin']:.3f}; "
          f"wrong (first 40): {wrong[:40]}", flush=True)

    # label mode: the log-probability of every candidate answer
    rows, groups = [], {}
    for it in (it for it in items if "labels" in it):
        lp = label_log_probs(model, tokens, resized[it["image"]], it["question"], it["labels"])
        best = it["labels"][int(np.argmax(lp))]
        s = groups.setdefault(it["qtype"], [0, 0])
        s[0] += best == it["answer"]
        s[1] += 1
        top2 = sorted(lp, reverse=True)[:2]
        rows.append({"image": it["image"], "question": it["question"], "answer": it["answer"],
                     "qtype": it["qtype"], "phrasing": it["phrasing"], "labels": it["labels"],
                     "log_probs": lp, "torch_label": best, "margin": top2[0] - top2[1]})
    doc = {"note": "label mode of the PyTorch model (float64 math on the saved float32 weights): "
                   "log_probs[i] = sum of the log-softmax of labels[i]'s tokens (tokenised alone, "
                   "no stop token), each after the image tokens, the prompt template and the "
                   "label's earlier tokens; accuracy of the best label per kind of question",
           "prompt": PROMPT, "accuracy": score(groups), "counts": groups, "items": rows}
    (Path(out) / "reference_labels.json").write_text(json.dumps(doc, indent=1) + "\n")
    log["label_accuracy"] = doc["accuracy"]
    log["label_counts"] = groups
    log["label_min_margin"] = min((r["margin"] for r in rows), default=None)
    print(f"label mode accuracy {doc['accuracy']} counts {groups}; smallest margin "
          f"{log['label_min_margin']}", flush=True)


# ---------------------------------------------------------------------------------------------
# Checks and training
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def self_checks(model, device):
    """The chunked scan against the sequential one, tower_features against timm."""
    g = torch.Generator().manual_seed(5)
    b, L, d, n = 3, 37, 8, 5
    x, dt = torch.randn(b, L, d, generator=g), F.softplus(torch.randn(b, L, d, generator=g))
    A = -torch.rand(d, n, generator=g) * 4
    B, C = torch.randn(b, L, n, generator=g), torch.randn(b, L, n, generator=g)
    args = [t.double().to(device) for t in (x, dt, A, B, C)]
    err = (scan_chunked(*args) - scan_sequential(*args)).abs().max().item()
    print(f"check: chunked vs sequential scan max abs diff {err:.3e}", flush=True)
    assert err < 1e-9
    img = torch.randint(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), generator=g).to(device)
    x = img.permute(0, 3, 1, 2).float() / 255
    for m in (model.dino, model.siglip):
        ours = tower_features(m, x)
        try:
            ref = m.get_intermediate_layers(x, n={len(m.blocks) - 2})[0]
            print(f"check: tower vs timm get_intermediate_layers max abs diff "
                  f"{(ours - ref).abs().max().item():.3e}", flush=True)
        except Exception as e:  # timm API differences: report, do not fail
            print(f"check: get_intermediate_layers unavailable: {e}", flush=True)
    # the whole LM: chunked vs sequential
    h = torch.randn(2, 45, D_MODEL, device=device)
    e = (model.llm(h, scan_chunked) - model.llm(h, scan_sequential)).abs().max().item()
    print(f"check: LM chunked vs sequential max abs diff {e:.3e}", flush=True)


def sample_pairs(rng, n, descs, shares):
    """n (source, index, question, answer) training samples: a source by its share, one of its
    images, a kind of question, one of its trained phrasings."""
    out = []
    sources, cum = list(shares), np.cumsum(list(shares.values()))
    for _ in range(n):
        src = sources[min(int(np.searchsorted(cum, rng.random(), side="right")), len(sources) - 1)]
        i = int(rng.integers(len(descs[src])))
        if src == "bank":
            qa = dd.pattern_qa(descs[src][i])
            qtype = list(qa)[int(rng.integers(len(qa)))]
            q, a = qa[qtype][int(rng.integers(len(qa[qtype])))]
        else:
            q, a = dd.sample_scene_qa(descs[src][i], rng)
        out.append((src, i, q, a))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", required=True, help="pattern frames from demo_data.py bank")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--scenes", type=int, default=80000)
    ap.add_argument("--multi", type=int, default=24000,
                    help="multi-object scenes (each also gives one region crop)")
    ap.add_argument("--p-pattern", type=float, default=0.2)
    ap.add_argument("--p-multi", type=float, default=0.12)
    ap.add_argument("--p-region", type=float, default=0.18)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--max-train-seconds", type=float, default=0,
                    help="emergency stop after this many seconds of training, logged (0: none); "
                         "a stopped run is not the recipe's model")
    ap.add_argument("--smoke", action="store_true", help="checks + a few steps + a few answers")
    args = ap.parse_args(argv)

    if args.smoke:
        args.scenes, args.multi = min(args.scenes, 2000), min(args.multi, 600)
    t0 = time.time()
    log = {"args": vars(args), "torch": torch.__version__}
    images, descs = make_scenes(args.scenes, args.multi, args.seed + 1, args.workers)
    images["bank"], descs["bank"] = load_bank(args.bank)
    shares = {"bank": args.p_pattern, "multi": args.p_multi, "region": args.p_region,
              "scene": 1 - args.p_pattern - args.p_multi - args.p_region}
    print("data: " + ", ".join(f"{len(d)} {s}" for s, d in descs.items())
          + f" ({time.time() - t0:.1f} s)", flush=True)

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = Cobra().to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters on {device}", flush=True)
    self_checks(model, device)

    tokens = Tokens()
    order = list(shares)                 # every image in one tensor, a source at an offset
    all_gpu = torch.as_tensor(np.concatenate([images[s] for s in order]), device=device)
    offset = dict(zip(order, np.cumsum([0] + [len(images[s]) for s in order[:-1]]).tolist()))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "token" in name or "pos_embed" in name or "A_log" in name
         else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    steps = 30 if args.smoke else args.steps
    lr_at = lambda s: args.lr * min(1.0, (s + 1) / args.warmup) * (
        0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))) * 0.99 + 0.01)
    rng = np.random.default_rng(args.seed + 2)
    losses = []
    model.train()
    t_train = time.time()
    for step in range(steps):
        batch = sample_pairs(rng, args.batch, descs, shares)
        batch_images = all_gpu[torch.tensor([offset[s] + i for s, i, _, _ in batch], device=device)]
        ids, rows, cols, targets = make_batch(tokens, [(q, a) for _, _, q, a in batch], device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        h = model.hidden(batch_images, ids)
        logits = model.llm.logits(h[rows, N_IMAGE_TOKENS + cols])
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step == 9:
            t_10 = time.time()
        if args.max_train_seconds and time.time() - t_train > args.max_train_seconds:
            log["stopped_early_at_step"] = step
            print(f"stopped early at step {step} (--max-train-seconds)", flush=True)
            break
        if step % 100 == 0 or step == steps - 1:
            acc = (logits.argmax(-1) == targets).float().mean().item()
            print(f"step {step} loss {np.mean(losses[-100:]):.4f} token acc {acc:.3f} "
                  f"lr {lr_at(step):.2e} ({time.time() - t_train:.0f} s)", flush=True)
    log["train_seconds"] = time.time() - t_train
    log["loss_every_100"] = [float(np.mean(losses[i:i + 100])) for i in range(0, len(losses), 100)]
    log["seconds_per_step_after_10"] = (time.time() - t_10) / max(1, len(losses) - 10)
    print(f"trained {len(losses)} steps in {log['train_seconds']:.0f} s, "
          f"{log['seconds_per_step_after_10'] * 1000:.1f} ms/step after the first 10", flush=True)

    save_released(model, args.out)
    files = sorted(p for p in Path(args.out).rglob("*") if p.is_file())
    log["sha256"] = {str(p.relative_to(args.out)): hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in files}
    print(json.dumps(log["sha256"], indent=1), flush=True)
    reference_answers(args.out, tokens, device, log, limit=60 if args.smoke else None)
    log["total_seconds"] = time.time() - t0
    (Path(args.out) / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"done in {log['total_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
