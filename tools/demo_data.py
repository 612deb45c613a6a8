#!/usr/bin/env python3
"""Synthetic scenes for the demo Cobra model (docs/demo-model.md): GStreamer videotestsrc patterns
rendered through GStreamer itself, and coloured-shape scenes drawn with numpy, each with its
caption and question/answer pairs generated from the scene description.

numpy only (the shape renderer also runs on the training machine, which has no GStreamer).

  demo_data.py bank    -o build-demo/bank.npz     training frames of every pattern (GStreamer)
  demo_data.py heldout -o tests/data/demo         held-out images + questions for the tests
  demo_data.py preview -o preview.png             a contact sheet of both kinds of scene

Every image is a uint8 H x W x 3 RGB array at its rendered size; the model (engine or PyTorch)
squashes it to its own S x S with Pillow's bicubic, as Cobra does.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np

# ---------------------------------------------------------------------------------------------
# Questions: every kind of question has several phrasings; the last one of each is never
# trained, only asked in the held-out set (does a prompt worded differently still work?)
# ---------------------------------------------------------------------------------------------

PHRASINGS = {
    "caption": ["Describe the image.", "What is in this picture?", "What is shown?",
                "Describe this frame.", "What is in this frame?"],
    "pattern": ["Which test pattern is this?", "What test pattern is this?", "What pattern is shown?"],
    "count": ["How many shapes are there?", "How many shapes do you see?", "Count the shapes.",
              "How many shapes are in this picture?"],
    "count_kind": ["How many {color} {shape}s are there?", "How many {color} {shape}s do you see?",
                   "Count the {color} {shape}s.", "How many {color} {shape}s are in this picture?"],
    "color": ["What color are the shapes?", "What colour are the shapes?", "What color is the shape?",
              "Which colour are the shapes?"],
    "shape": ["Which shape is shown?", "What shape is shown?", "What kind of shape is this?",
              "What shape do you see?"],
    "background": ["What color is the background?", "What colour is the background?",
                   "Which colour is the background?"],
    "has": ["Is there a {color} {shape}?", "Are there any {color} {shape}s?",
            "Do you see a {color} {shape}?", "Do you see any {color} {shape}s?"],
    "is_background": ["Is the background {bg}?", "Is it on a {bg} background?",
                      "Is this on a {bg} background?"],
}
# The first phrasing of each kind is the canonical one (the only one the model had before).
PATTERN_QUESTION = PHRASINGS["pattern"][0]
# Candidate answers of the closed questions, for label mode (cobra-cli --labels).
YES_NO = ["yes", "no"]


def trained_phrasings(qtype):
    return PHRASINGS[qtype][:-1]


def heldout_phrasing(qtype):
    return PHRASINGS[qtype][-1]


# ---------------------------------------------------------------------------------------------
# videotestsrc patterns: caption ("Describe the image.") and name ("Which test pattern is this?")
# ---------------------------------------------------------------------------------------------

# Left out: blink (a black or white frame, whichever the frame count says), solid-color (white
# by default, the same image as "white"), zone-plate and chroma-zone-plate (flat grey with the
# default k* parameters). checkers-1/2/4/8 share one answer: after the squash to S px the
# square size depends on the input resolution, and 1-px squares blur to a flat olive.
PATTERNS = {
    "smpte": ("smpte color bars", "smpte"),
    "snow": ("random television snow", "snow"),
    "black": ("a plain black image", "black"),
    "white": ("a plain white image", "white"),
    "red": ("a plain red image", "red"),
    "green": ("a plain green image", "green"),
    "blue": ("a plain blue image", "blue"),
    "checkers-1": ("a red and green checkerboard", "checkers"),
    "checkers-2": ("a red and green checkerboard", "checkers"),
    "checkers-4": ("a red and green checkerboard", "checkers"),
    "checkers-8": ("a red and green checkerboard", "checkers"),
    "circular": ("concentric black and white rings", "circular"),
    "smpte75": ("smpte color bars at 75 percent", "smpte75"),
    "gamut": ("black, white, red and blue bands", "gamut"),
    "ball": ("a white ball on a black background", "ball"),
    "smpte100": ("smpte color bars at 100 percent", "smpte100"),
    "bar": ("a white vertical bar on a black background", "bar"),
    "pinwheel": ("a black and white pinwheel", "pinwheel"),
    "spokes": ("white spokes on a black background", "spokes"),
    "gradient": ("a gradient from black to white", "gradient"),
    "colors": ("a grid of all colors", "colors"),
    "smpte-rp-219": ("smpte rp 219 color bars", "smpte-rp-219"),
}

# Training sizes and held-out sizes (no overlap except 320x240, videotestsrc's default, where
# the held-out frames of the moving ball are frames training never saw).
TRAIN_SIZES = [(320, 240), (160, 120), (640, 480), (224, 224), (256, 144), (352, 288),
               (176, 144), (400, 300), (128, 96), (480, 270), (112, 112), (288, 216)]
HELDOUT_SIZES = [(320, 240), (300, 200), (200, 150), (512, 384), (240, 180), (384, 216),
                 (144, 144)]
BALL_FRAMES = 240           # frames of the ball's path rendered per size
BALL_TRAIN_STEP = 8         # training uses frames 0, 8, 16, ...; held-out ones are 4 mod 8


def gst_frames(pattern, width, height, frames=1, fmt="RGB"):
    """`frames` frames of videotestsrc pattern=`pattern` as [n, h, w, 3] uint8 RGB, rendered by
    gst-launch-1.0 in `fmt` (then converted to RGB by videoconvert when it is not RGB)."""
    cmd = ["gst-launch-1.0", "-q", "videotestsrc", f"pattern={pattern}", f"num-buffers={frames}",
           "!", f"video/x-raw,format={fmt},width={width},height={height},framerate=30/1"]
    if fmt != "RGB":
        cmd += ["!", "videoconvert", "!", f"video/x-raw,format=RGB,width={width},height={height}"]
    cmd += ["!", "fdsink", "fd=1"]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    stride = (width * 3 + 3) & ~3        # GStreamer pads RGB rows to 4 bytes
    a = np.frombuffer(raw, np.uint8)
    if a.size != frames * stride * height:
        raise RuntimeError(f"{pattern} {width}x{height} {fmt}: got {a.size} bytes")
    return a.reshape(frames, height, stride)[:, :, :width * 3].reshape(frames, height, width, 3).copy()


def pattern_qa(pattern, phrasings=None):
    """{question kind: [(question, answer), ...]} of a pattern, in the trained phrasings (or
    `phrasings(kind)`)."""
    caption, name = PATTERNS[pattern]
    phrasings = phrasings or trained_phrasings
    return {"caption": [(q, caption) for q in phrasings("caption")],
            "pattern": [(q, name) for q in phrasings("pattern")]}


# ---------------------------------------------------------------------------------------------
# Coloured-shape scenes
# ---------------------------------------------------------------------------------------------

SHAPE_COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230),
                "yellow": (240, 220, 30), "white": (245, 245, 245), "black": (10, 10, 10)}
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
SHAPES = ["circle", "square", "triangle"]
COUNT_WORDS = ["zero", "one", "two", "three", "four"]


def scene_params(rng):
    """A random scene description (everything the renderer and the questions need)."""
    bg = str(rng.choice(list(BACKGROUNDS)))
    color = str(rng.choice([c for c in SHAPE_COLORS if c != bg]))
    width = int(rng.integers(128, 385))
    height = int(np.clip(round(width / rng.uniform(0.75, 1.34)), 96, 384))
    return {"kind": "shapes", "shape": str(rng.choice(SHAPES)), "color": color,
            "count": int(rng.integers(1, 5)), "background": bg, "width": width, "height": height,
            "seed": int(rng.integers(0, 2**31 - 1))}


def _shape_mask(shape, cx, cy, r, xx, yy):
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        h = 0.85 * r
        return (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
    # upward isosceles triangle, apex at (cx, cy - r), base 2r wide at cy + r
    top = cy - r
    return (yy <= cy + r) & (yy >= top) & (np.abs(xx - cx) <= (yy - top) / 2.0 * 1.0)


def render_scene(p):
    """The uint8 RGB image of a scene description (deterministic in p['seed'])."""
    rng = np.random.default_rng(p["seed"])
    w, h = p["width"], p["height"]
    jitter = lambda c, j: np.clip(np.array(c) + rng.integers(-j, j + 1, 3), 0, 255)
    bg = jitter(BACKGROUNDS[p["background"]], 16)
    fg = jitter(SHAPE_COLORS[p["color"]], 24)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg.astype(np.uint8)
    side = min(w, h)
    base = rng.uniform(0.10, 0.15) * side
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    placed = []
    for attempt in range(2000):
        if len(placed) == p["count"]:
            break
        if attempt == 1999 or (attempt > 0 and attempt % 400 == 0):
            placed, base = [], base * 0.9          # start again a little smaller
        r = base * rng.uniform(0.85, 1.0)
        m = r + 0.04 * side
        cx, cy = rng.uniform(m, w - m), rng.uniform(m, h - m)
        if all(max(abs(cx - x), abs(cy - y)) > r + q + 0.06 * side for x, y, q in placed):
            placed.append((cx, cy, r))
    if len(placed) != p["count"]:
        raise RuntimeError(f"could not place {p['count']} shapes in {w}x{h}")
    for cx, cy, r in placed:
        img[_shape_mask(p["shape"], cx, cy, r, xx, yy)] = fg.astype(np.uint8)
    return img


def _shape_box(shape, cx, cy, r):
    """The shape's tight bounding box (x0, y0, x1, y1) in pixels (_shape_mask's extent)."""
    h = 0.85 * r if shape == "square" else r
    return cx - h, cy - h, cx + h, cy + h


def scene_caption(p):
    n = p["count"]
    what = f"{p['color']} {p['shape']}" + ("s" if n > 1 else "")
    return f"{'a' if n == 1 else COUNT_WORDS[n]} {what} on a {background_words(p['background'])} background"


# ---------------------------------------------------------------------------------------------
# Multi-object scenes (regions): 2-4 shapes of different colours, spread apart so that a box
# 30% larger than any one shape holds only that shape, on plain or textured backgrounds
# ---------------------------------------------------------------------------------------------

TEXTURES = {"noise": "noisy", "gradient": "gradient"}     # background name -> caption word
TEXTURE_COLORS = ["red", "green", "blue", "yellow"]       # grey textures hide white and black
CROP_MARGIN = (0.10, 0.30)      # a region's margin on each side, as a fraction of its size
N_MULTI_MAX = 4


def background_words(bg):
    return TEXTURES.get(bg, bg)


def multi_params(rng):
    """A random multi-object scene: distinct colours, any shapes, and the object and margins
    (left, top, right, bottom) of the region crop training uses."""
    bg = (str(rng.choice(list(TEXTURES))) if rng.random() < 0.4
          else str(rng.choice(list(BACKGROUNDS))))
    palette = TEXTURE_COLORS if bg in TEXTURES else [c for c in SHAPE_COLORS if c != bg]
    n = int(rng.integers(2, N_MULTI_MAX + 1))
    colors = [palette[i] for i in rng.permutation(len(palette))[:n]]
    width = int(rng.integers(160, 385))
    height = int(np.clip(round(width / rng.uniform(0.75, 1.34)), 120, 384))
    return {"kind": "multi", "objects": [{"color": c, "shape": str(rng.choice(SHAPES))} for c in colors],
            "count": n, "background": bg, "width": width, "height": height,
            "crop": int(rng.integers(n)), "margins": [float(m) for m in rng.uniform(*CROP_MARGIN, 4)],
            "seed": int(rng.integers(0, 2**31 - 1))}


def _background(bg, rng, h, w):
    if bg in BACKGROUNDS:
        c = np.clip(np.array(BACKGROUNDS[bg]) + rng.integers(-16, 17, 3), 0, 255)
        return np.broadcast_to(c.astype(np.uint8), (h, w, 3)).copy()
    if bg == "noise":       # grey blocks of 1-6 px
        cell = int(rng.integers(1, 7))
        g = rng.integers(48, 208, (-(-h // cell), -(-w // cell)))
        g = g.repeat(cell, 0).repeat(cell, 1)[:h, :w]
    else:                   # a grey ramp in any direction
        lo, hi = rng.integers(0, 90), rng.integers(165, 256)
        a = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        t = (xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)
        g = lo + (hi - lo) * (t - t.min()) / max(1e-9, np.ptp(t))
    return np.repeat(np.round(g).astype(np.uint8)[:, :, None], 3, 2)


def render_multi(p):
    """(image, objects): the scene and, for each object, its colour, shape and tight box
    (x0, y0, x1, y1) in pixels. Deterministic in p['seed']."""
    rng = np.random.default_rng(p["seed"])
    w, h = p["width"], p["height"]
    img = _background(p["background"], rng, h, w)
    side = min(w, h)
    base = rng.uniform(0.09, 0.13) * side
    grow = 1 + 2 * CROP_MARGIN[1]
    placed = []
    for attempt in range(4000):
        if len(placed) == p["count"]:
            break
        if attempt > 0 and attempt % 400 == 0:
            placed, base = [], base * 0.9
        r = base * rng.uniform(0.85, 1.0)
        m = r * (1 + 2 * 0.25) + 1            # a 25% margin box stays inside the frame
        cx, cy = rng.uniform(m, w - m), rng.uniform(m, h - m)
        if all(max(abs(cx - x), abs(cy - y)) > grow * max(r, q) + min(r, q) + 2 for x, y, q in placed):
            placed.append((cx, cy, r))
    if len(placed) != p["count"]:
        raise RuntimeError(f"could not place {p['count']} shapes in {w}x{h}")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    objects = []
    for o, (cx, cy, r) in zip(p["objects"], placed):
        fg = np.clip(np.array(SHAPE_COLORS[o["color"]]) + rng.integers(-24, 25, 3), 0, 255)
        img[_shape_mask(o["shape"], cx, cy, r, xx, yy)] = fg.astype(np.uint8)
        objects.append(dict(o, tight=_shape_box(o["shape"], cx, cy, r)))
    return img, objects


def region_box(tight, margins, width, height):
    """The integer box (x, y, w, h) of a region: the tight box grown by margins (left, top,
    right, bottom; fractions of its width/height), clipped to the frame."""
    x0, y0, x1, y1 = tight
    bw, bh = x1 - x0, y1 - y0
    X0 = max(0, int(np.floor(x0 - margins[0] * bw)))
    Y0 = max(0, int(np.floor(y0 - margins[1] * bh)))
    X1 = min(width, int(np.ceil(x1 + margins[2] * bw)))
    Y1 = min(height, int(np.ceil(y1 + margins[3] * bh)))
    return X0, Y0, X1 - X0, Y1 - Y0


def crop(img, box):
    x, y, w, h = box
    return img[y:y + h, x:x + w].copy()


def region_params(p, obj):
    """A region (one object cropped from a multi-object scene) described as a one-shape scene."""
    return {"kind": "region", "shape": obj["shape"], "color": obj["color"], "count": 1,
            "background": p["background"]}


def multi_caption(p):
    return (f"{COUNT_WORDS[p['count']]} shapes of different colors on a "
            f"{background_words(p['background'])} background")


def scene_objects(p):
    """[(colour, shape), ...] of any scene description."""
    if p["kind"] == "multi":
        return [(o["color"], o["shape"]) for o in p["objects"]]
    return [(p["color"], p["shape"])] * p["count"]


def scene_qtypes(p):
    """The kinds of question that have one right answer about a scene."""
    plain = p["background"] in BACKGROUNDS
    if p["kind"] == "multi":
        return ["caption", "count", "has"] + (["is_background"] if plain else [])
    return (["caption", "count", "count_kind", "color", "shape", "has"]
            + (["background", "is_background"] if plain else []))


def scene_question(p, qtype, template, rng, want=None):
    """(question, answer) of kind qtype about scene p in the phrasing `template`. Yes/no
    questions ask about a present thing or an absent one (want "yes"/"no", else 50/50); an
    absent colour/shape pair shares its colour or its shape with a present object 70% of the
    time, so that both words matter."""
    n = p["count"]
    if qtype == "caption":
        return template, multi_caption(p) if p["kind"] == "multi" else scene_caption(p)
    if qtype == "count":
        return template, COUNT_WORDS[n]
    if qtype == "count_kind":
        return template.format(color=p["color"], shape=p["shape"]), COUNT_WORDS[n]
    if qtype in ("color", "shape", "background"):
        return template, p[qtype]
    want = want or ("yes" if rng.random() < 0.5 else "no")
    if qtype == "is_background":
        bg = p["background"] if want == "yes" else str(
            rng.choice([b for b in BACKGROUNDS if b != p["background"]]))
        return template.format(bg=bg), want
    present = sorted(set(scene_objects(p)))
    if want == "yes":
        color, shape = present[int(rng.integers(len(present)))]
    else:
        absent = [(c, s) for c in SHAPE_COLORS for s in SHAPES if (c, s) not in present]
        near = [(c, s) for c, s in absent if any(c == c0 or s == s0 for c0, s0 in present)]
        pool = near if near and rng.random() < 0.7 else absent
        color, shape = pool[int(rng.integers(len(pool)))]
    return template.format(color=color, shape=shape), want


def sample_scene_qa(p, rng):
    """One training (question, answer): a kind of question, then one of its trained phrasings."""
    qtypes = scene_qtypes(p)
    qtype = qtypes[int(rng.integers(len(qtypes)))]
    phr = trained_phrasings(qtype)
    return scene_question(p, qtype, phr[int(rng.integers(len(phr)))], rng)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def write_png(path, a):
    """A minimal RGB PNG writer (no Pillow here)."""
    h, w, _ = a.shape
    raw = b"".join(b"\0" + a[y].tobytes() for y in range(h))
    chunk = lambda t, d: (struct.pack(">I", len(d)) + t + d
                          + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def make_bank(out):
    """Training frames of every pattern: each training size, RGB and I420->RGB, the ball at 30
    positions, the other patterns (snow too) once per size and format. Saved as one compressed .npz + an index."""
    arrays, index = {}, []

    def add(img, pattern, size, fmt, frame):
        key = f"i{len(index)}"
        arrays[key] = img
        index.append({"key": key, "pattern": pattern, "width": size[0], "height": size[1],
                      "format": fmt, "frame": frame})

    for size in TRAIN_SIZES:
        for fmt in ("RGB", "I420"):
            for pattern in PATTERNS:
                if pattern == "ball":
                    frames = gst_frames(pattern, *size, BALL_FRAMES, fmt)
                    for f in range(0, BALL_FRAMES, BALL_TRAIN_STEP):
                        add(frames[f], pattern, size, fmt, f)
                else:
                    add(gst_frames(pattern, *size, 1, fmt)[0], pattern, size, fmt, 0)
        print(f"bank: {size[0]}x{size[1]} done, {len(index)} frames", file=sys.stderr)
    arrays["index"] = np.frombuffer(json.dumps(index).encode(), np.uint8)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}: {len(index)} frames, {os.path.getsize(out):,} bytes")


def load_npz_index(path):
    z = np.load(path)
    return z, json.loads(z["index"].tobytes().decode())


HELDOUT_SEED = 20261129
N_HELDOUT_SCENES = 60
N_HELDOUT_MULTI = 30
LABEL_QTYPES = ("has", "is_background", "color", "shape")
N_LABEL_ITEMS_PER_QTYPE = 30


def label_set(qtype):
    """The candidate answers of a closed question (label mode)."""
    return {"has": YES_NO, "is_background": YES_NO, "color": list(SHAPE_COLORS),
            "shape": SHAPES}[qtype]


def make_heldout(out_dir):
    """Held-out images (heldout.npz) and questions/answers (heldout.json) for the tests."""
    os.makedirs(out_dir, exist_ok=True)
    arrays, images, items = {}, [], []
    qrng = np.random.default_rng(HELDOUT_SEED + 2)       # question choices, apart from the scenes

    def add_image(img, desc):
        key = f"i{len(images)}"
        arrays[key] = img
        images.append(dict(desc, key=key))
        return key

    def add(key, qtype, question, answer, heldout=False):
        items.append({"image": key, "question": question, "answer": answer, "qtype": qtype,
                      "phrasing": "heldout" if heldout else "trained"})

    def ask(key, p, qtype, template, heldout=False, want=None):
        add(key, qtype, *scene_question(p, qtype, template, qrng, want), heldout=heldout)

    n_pattern = 0
    for size in HELDOUT_SIZES:
        for pattern in PATTERNS:
            if pattern == "ball":
                frames = gst_frames(pattern, *size, BALL_FRAMES, "RGB")
                picks = [4 + 8 * k for k in (3, 17)] if size == (320, 240) else [0, 4 + 8 * 11]
            else:
                frames, picks = gst_frames(pattern, *size, 1, "RGB"), [0]
            for f in picks:
                key = add_image(frames[f], {"kind": "pattern", "pattern": pattern, "width": size[0],
                                            "height": size[1], "format": "RGB", "frame": f})
                qa = pattern_qa(pattern, lambda qtype: PHRASINGS[qtype])
                for qtype, k in (("caption", 0), ("caption", 1), ("pattern", 0)):
                    add(key, qtype, *qa[qtype][k])
                qtype = ("caption", "pattern")[n_pattern % 2]     # and one held-out wording
                add(key, qtype, *qa[qtype][-1], heldout=True)
                n_pattern += 1

    rng = np.random.default_rng(HELDOUT_SEED)
    heldout_cycle = ["caption", "count", "count_kind", "color", "shape", "background", "has",
                     "is_background"]
    for n in range(N_HELDOUT_SCENES):
        p = scene_params(rng)
        key = add_image(render_scene(p), p)
        first = lambda qtype: PHRASINGS[qtype][0]
        ask(key, p, "caption", first("caption"))
        ask(key, p, "count_kind", first("count_kind"))
        qtype = ("count", "color", "shape", "background")[n % 4]
        ask(key, p, qtype, first(qtype))
        ask(key, p, "has", first("has"), want=YES_NO[n % 2])
        ask(key, p, "is_background", first("is_background"), want=YES_NO[(n // 2) % 2])
        qtype = heldout_cycle[n % len(heldout_cycle)]
        phr = trained_phrasings(qtype)[1:]               # a newer trained wording
        ask(key, p, qtype, phr[int(qrng.integers(len(phr)))])
        qtype = heldout_cycle[(n + 3) % len(heldout_cycle)]
        ask(key, p, qtype, heldout_phrasing(qtype), heldout=True)

    # Multi-object frames, each object's box, and each box's crop as a region image.
    mrng = np.random.default_rng(HELDOUT_SEED + 1)
    region_questions = [("color", "What color is the shape?"), ("shape", "Which shape is shown?"),
                        ("caption", "Describe the image.")]
    for n in range(N_HELDOUT_MULTI):
        p = multi_params(mrng)
        img, objs = render_multi(p)
        desc = {k: v for k, v in p.items() if k not in ("crop", "margins")}
        key = add_image(img, desc)
        frame = images[-1]
        ask(key, p, "caption", PHRASINGS["caption"][0])
        ask(key, p, "count", PHRASINGS["count"][0])
        ask(key, p, "has", trained_phrasings("has")[n % 3], want="yes")
        ask(key, p, "has", trained_phrasings("has")[(n + 1) % 3], want="no")
        qtypes = scene_qtypes(p)
        if "is_background" in qtypes:
            ask(key, p, "is_background", PHRASINGS["is_background"][0], want=YES_NO[n % 2])
        qtype = qtypes[n % len(qtypes)]
        ask(key, p, qtype, heldout_phrasing(qtype), heldout=True)
        boxes = []
        for j, o in enumerate(objs):
            box = region_box(o["tight"], qrng.uniform(0.12, 0.28, 4), p["width"], p["height"])
            rp = region_params(p, o)
            rkey = add_image(crop(img, box), dict(rp, width=box[2], height=box[3], frame_image=key,
                                                  box=list(box)))
            answers = {}
            for qtype, q in region_questions:
                answers[q] = scene_question(rp, qtype, q, qrng)[1]
                add(rkey, qtype, q, answers[q])
            qtype = ("color", "shape")[(n + j) % 2]
            ask(rkey, rp, qtype, heldout_phrasing(qtype), heldout=True)
            boxes.append({"color": o["color"], "shape": o["shape"], "box": list(box),
                          "region_image": rkey, "answers": answers})
        frame["objects"] = boxes

    # label mode: evenly spread items of each closed kind of question get their candidates
    for qtype in LABEL_QTYPES:
        cand = [it for it in items if it["qtype"] == qtype]
        for k in range(min(N_LABEL_ITEMS_PER_QTYPE, len(cand))):
            it = cand[k * len(cand) // min(N_LABEL_ITEMS_PER_QTYPE, len(cand))]
            it["labels"] = label_set(qtype)

    np.savez_compressed(os.path.join(out_dir, "heldout.npz"), **arrays)
    with open(os.path.join(out_dir, "heldout.json"), "w") as f:
        json.dump({"seed": HELDOUT_SEED, "sizes": HELDOUT_SIZES, "phrasings": PHRASINGS,
                   "images": images, "items": items}, f, indent=1)
    print(f"wrote {out_dir}: {len(images)} images, {len(items)} questions, "
          f"{sum('labels' in it for it in items)} with labels")


def _resize_nearest(img, h, w):
    return img[(np.arange(h) * img.shape[0] // h)[:, None], np.arange(w) * img.shape[1] // w]


def make_preview(out):
    tiles = []
    for pattern in list(PATTERNS)[:12]:
        tiles.append(gst_frames(pattern, 160, 120)[0])
    rng = np.random.default_rng(1)
    for _ in range(6):
        p = scene_params(rng)
        p.update(width=160, height=120)
        tiles.append(render_scene(p))
    for _ in range(3):
        p = multi_params(rng)
        p.update(width=160, height=120)
        img, objs = render_multi(p)
        box = region_box(objs[p["crop"]]["tight"], p["margins"], 160, 120)
        tiles += [img, np.asarray(_resize_nearest(crop(img, box), 120, 160))]
    rows = [np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=128)
                            for t in tiles[r:r + 6]], 1) for r in range(0, len(tiles), 6)]
    write_png(out, np.concatenate(rows, 0))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["bank", "heldout", "preview"])
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    if args.what == "bank":
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        make_bank(args.output)
    elif args.what == "heldout":
        make_heldout(args.output)
    else:
        make_preview(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
