#!/usr/bin/env python3
"""The demo model sees: held-out scenes through the engine (cobra-cli) and videotestsrc patterns
through a real cobravlm pipeline are answered correctly, and the engine's greedy answers equal the
PyTorch model's (tests/data/demo/reference_answers.json, computed by tools/train_demo.py).
Regions (crops at the boxes heldout.json gives for every object of the multi-object frames, and
the same boxes as regions of interest through cobravlm roi-mode in a PyGObject app) and
phrasings never trained are held-out kinds of their own; label mode (cobra-cli --labels) is
checked against the PyTorch log-probs in reference_labels.json once cobra-cli has it.

Environment (set by tests/meson.build): COBRA_TEST_DATA, COBRA_TEST_MODELS (holds
demo-f32.gguf, demo-q8_0.gguf), COBRA_CLI, GST_PLUGIN_PATH. Exit 0 pass, 1 fail, 77 skip.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import demo_data as dd  # noqa: E402

DATA = Path(os.environ.get("COBRA_TEST_DATA", ROOT / "tests" / "data"))
MODELS = Path(os.environ.get("COBRA_TEST_MODELS", ROOT / "build" / "tests"))
CLI = os.environ.get("COBRA_CLI", str(ROOT / "build" / "tools" / "cobra-cli"))
# Least share of right answers per group of held-out questions: each kind of image in the trained
# phrasings, and the phrasings never trained. The old kinds keep the 95% they always had; the
# new ones are what docs/demo-model.md reports for the PyTorch model, less a few questions
# (multi-object yes/no questions are its weak spot; three held-out wordings are never understood).
MIN_ACCURACY = {"pattern": 0.95, "shapes": 0.95, "region": 0.95, "multi": 0.80,
                "heldout-phrasing": 0.72}
# The same for label mode, per kind of question (30 questions each).
MIN_LABEL_ACCURACY = {"color": 0.95, "is_background": 0.95, "shape": 0.80, "has": 0.70}
LABEL_F32_TOLERANCE = 1e-3      # |engine log-prob - PyTorch float64 log-prob|, f32 weights
JOBS = max(1, min(16, os.cpu_count() or 1))

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def ask_cli(model, image, questions):
    """The answers to every question about one image, from one cobra-cli run (one vision pass)."""
    cmd = [CLI, "-m", str(model), "-i", str(image), "-n", "32", "-t", "1"]
    for q in questions:
        cmd += ["-p", q]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    answers = r.stdout.split("\n")[:len(questions)]
    if r.returncode != 0 or len(answers) != len(questions):
        return [f"<cobra-cli failed: {r.stderr.strip()[-200:]}>"] * len(questions)
    return [a.strip() for a in answers]


def accuracy_group(kind, item):
    """As tools/train_demo.py groups the held-out questions."""
    return "heldout-phrasing" if item["phrasing"] == "heldout" else kind


def regions_part(held, z):
    """heldout.json's boxes are what the element tests attach as regions of interest: every
    region image is its frame cut at its box, and the box's expected answers are its items'."""
    images = {im["key"]: im for im in held["images"]}
    answers = {(it["image"], it["question"]): it["answer"] for it in held["items"]}
    frames = [im for im in held["images"] if im["kind"] == "multi"]
    bad = []
    for im in frames:
        for o in im["objects"]:
            x, y, w, h = o["box"]
            frame = z[im["key"]]
            region = images[o["region_image"]]
            if not (0 <= x and 0 <= y and x + w <= frame.shape[1] and y + h <= frame.shape[0]
                    and np.array_equal(z[o["region_image"]], frame[y:y + h, x:x + w])
                    and region["frame_image"] == im["key"] and region["box"] == o["box"]
                    and all(answers.get((o["region_image"], q)) == a for q, a in o["answers"].items())
                    and o["answers"].get("What color is the shape?") == o["color"]
                    and o["answers"].get("Which shape is shown?") == o["shape"]):
                bad.append((im["key"], o["box"]))
    n = sum(len(im["objects"]) for im in frames)
    check(n > 0 and not bad, f"heldout.json: {n} boxes of {len(frames)} multi-object frames are "
          f"their regions' crops with their answers" + (f"; not: {bad[:5]}" if bad else ""))


def engine_part(tmp):
    ref = json.loads((DATA / "demo" / "reference_answers.json").read_text())
    held = json.loads((DATA / "demo" / "heldout.json").read_text())
    z = np.load(DATA / "demo" / "heldout.npz")
    kinds = {im["key"]: im["kind"] for im in held["images"]}
    for im in held["images"]:
        np.save(tmp / f"{im['key']}.npy", z[im["key"]])
    regions_part(held, z)
    items = ref["items"]
    check(len(items) == len(held["items"]), f"reference answers cover all {len(held['items'])} held-out questions")
    for outtype in ("f32", "q8_0"):
        model = MODELS / f"demo-{outtype}.gguf"
        by_image = {}
        for it in items:
            by_image.setdefault(it["image"], []).append(it["question"])
        with ThreadPoolExecutor(JOBS) as pool:
            replies = dict(zip(by_image, pool.map(
                lambda key: ask_cli(model, tmp / f"{key}.npy", by_image[key]), by_image)))
        answers = [replies[it["image"]][by_image[it["image"]].index(it["question"])] for it in items]
        score, detail = {}, {}
        for it, a in zip(items, answers):
            for d, k in ((score, accuracy_group(kinds[it["image"]], it)),
                         (detail, f"{kinds[it['image']]}/{it['qtype']}/{it['phrasing']}")):
                s = d.setdefault(k, [0, 0])
                s[0] += a == it["answer"]
                s[1] += 1
        check(set(score) == set(MIN_ACCURACY), f"engine {outtype}: held-out groups {sorted(score)}")
        for group, (good, n) in sorted(score.items()):
            check(good / n >= MIN_ACCURACY.get(group, 1.0),
                  f"engine {outtype}: {group} answered correctly {good}/{n} ({100 * good / n:.1f}%)")
        print(f"     {outtype} per kind/question/phrasing: "
              + ", ".join(f"{k} {g}/{n}" for k, (g, n) in sorted(detail.items())))
        same = [a == it["torch_answer"] for it, a in zip(items, answers)]
        diff = [(it["question"], it["torch_answer"], a) for it, a, s in zip(items, answers, same) if not s]
        check(all(same), f"engine {outtype}: greedy answers equal PyTorch's on {sum(same)}/{len(same)}"
              + (f"; first differences {diff[:5]}" if diff else ""))
        wrong = [(it["question"], it["answer"], a) for it, a in zip(items, answers) if a != it["answer"]]
        if wrong:
            print(f"     {outtype} wrong answers: {wrong}")


def cli_has_labels():
    r = subprocess.run([CLI, "--help"], capture_output=True, text=True, timeout=60)
    return "--labels" in r.stdout


def score_labels_cli(model, image, question, labels):
    """cobra-cli --labels: {"label": best, "confidence": share, "scores": {label: log-prob}}."""
    cmd = [CLI, "-m", str(model), "-i", str(image), "-t", "1", "-p", question,
           "--labels", ",".join(labels)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"error": f"cobra-cli --labels failed: rc {r.returncode} {r.stderr.strip()[-200:]}"}
    return json.loads(lines[-1])


def first_token_log_probs(model, image, question, tmp):
    """log-softmax of the engine's logits after the prompt (cobra-cli --dump-dir, one token)."""
    d = Path(tempfile.mkdtemp(dir=tmp))
    r = subprocess.run([CLI, "-m", str(model), "-i", str(image), "-t", "1", "-n", "1", "-p", question,
                        "--dump-dir", str(d)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return None
    logits = np.load(d / "logits_last.npy").astype(np.float64).reshape(-1)
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def tokenize(model, text):
    r = subprocess.run([CLI, "-m", str(model), "--tokenize"], input=text, capture_output=True,
                       text=True, timeout=60)
    return json.loads(r.stdout)


def labels_part(tmp):
    """Label mode: the engine's log-probs equal PyTorch's float64 ones (f32 to 1e-3; q8_0 picks
    the same label), and the picked labels are right as often as documented. Before that, the
    references of one-token labels are checked against the engine's own next-token distribution
    after the prompt, which needs no label mode."""
    ref = json.loads((DATA / "demo" / "reference_labels.json").read_text())
    items = ref["items"]
    check(len(items) >= 100, f"reference_labels.json has {len(items)} questions with labels")
    model = MODELS / "demo-f32.gguf"
    ids = {lab: tokenize(model, lab) for it in items for lab in it["labels"]}
    with ThreadPoolExecutor(JOBS) as pool:
        dists = list(pool.map(lambda it: first_token_log_probs(
            model, tmp / f"{it['image']}.npy", it["question"], tmp), items))
    diffs = [abs(lp[ids[lab][0]] - want) for it, lp in zip(items, dists) if lp is not None
             for lab, want in zip(it["labels"], it["log_probs"]) if len(ids[lab]) == 1]
    check(all(lp is not None for lp in dists) and diffs and max(diffs) <= LABEL_F32_TOLERANCE,
          f"engine f32: next-token log-probs of {len(diffs)} one-token labels equal "
          f"reference_labels.json's (largest difference {max(diffs, default=float('nan')):.2e})")
    if not cli_has_labels():
        print("skip label mode: this cobra-cli has no --labels option (branch labels adds it)")
        return
    for outtype in ("f32", "q8_0"):
        model = MODELS / f"demo-{outtype}.gguf"
        with ThreadPoolExecutor(JOBS) as pool:
            got = list(pool.map(lambda it: score_labels_cli(model, tmp / f"{it['image']}.npy",
                                                            it["question"], it["labels"]), items))
        failed = [g["error"] for g in got if "error" in g]
        check(not failed, f"engine {outtype}: cobra-cli --labels answered {len(items) - len(failed)}"
              f"/{len(items)}" + (f"; first failure: {failed[0]}" if failed else ""))
        if failed:
            continue
        worst, differ, score = 0.0, [], {}
        for it, g in zip(items, got):
            worst = max([worst] + [abs(g["scores"][lab] - lp) for lab, lp in zip(it["labels"], it["log_probs"])])
            if g["label"] != it["torch_label"]:
                differ.append((it["question"], it["torch_label"], g["label"], round(it["margin"], 4)))
            s = score.setdefault(it["qtype"], [0, 0])
            s[0] += g["label"] == it["answer"]
            s[1] += 1
        if outtype == "f32":
            check(worst <= LABEL_F32_TOLERANCE, f"engine f32: label log-probs within "
                  f"{LABEL_F32_TOLERANCE} of PyTorch's (largest difference {worst:.2e})")
        check(not differ, f"engine {outtype}: picks PyTorch's label on {len(items) - len(differ)}"
              f"/{len(items)}" + (f"; differences {differ[:5]}" if differ else ""))
        for qtype, (good, n) in sorted(score.items()):
            check(good / n >= MIN_LABEL_ACCURACY.get(qtype, 1.0),
                  f"engine {outtype}: label mode right on {qtype} {good}/{n} ({100 * good / n:.1f}%)")


# GstStructure quotes a string only when it needs to: text=(string)"a\ white\ ball" or text=(string)ball
MESSAGE_TEXT = re.compile(r'\(element\): cobravlm, (?:.*?, )?text=\(string\)(?:"((?:[^"\\]|\\.)*)"|([^,;"]*))')


def pipeline_caption(model, pattern, caps, prompt):
    caps = ["!", f"video/x-raw,{caps}"] if caps else []
    cmd = ["gst-launch-1.0", "-m", "videotestsrc", f"pattern={pattern}", "num-buffers=1", *caps,
           "!", "cobravlm", f"model-file={model}", "async=false", "n-threads=1", f"prompt={prompt}",
           "!", "fakesink"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = MESSAGE_TEXT.search(r.stdout)
    if r.returncode != 0 or not m:
        return f"<pipeline failed: rc {r.returncode} {r.stderr.strip()[-200:]}>"
    raw = m.group(1) if m.group(1) is not None else m.group(2)
    return re.sub(r"\\(.)", r"\1", raw).strip()


def pipeline_part():
    if not (shutil.which("gst-launch-1.0") and shutil.which("gst-inspect-1.0")):
        print("skip pipeline: no gst-launch-1.0 / gst-inspect-1.0")
        return
    probe = subprocess.run(["gst-inspect-1.0", "cobravlm"], capture_output=True, text=True)
    if probe.returncode != 0:
        print("skip pipeline: cobravlm not found on GST_PLUGIN_PATH")
        return
    model = MODELS / "demo-q8_0.gguf"
    # None: videotestsrc's default 320x240 (what the README command shows); the sizes were never
    # seen in training, and I420 goes through the element's own conversion to RGB
    capss = (None, "width=200,height=150", "width=512,height=384", "format=I420,width=320,height=240")
    cases = [(p, caps, q) for p in dd.PATTERNS for caps in capss
             for q in ("Describe the image.", dd.PATTERN_QUESTION)]
    with ThreadPoolExecutor(JOBS) as pool:
        got = list(pool.map(lambda c: pipeline_caption(model, *c), cases))
    good = 0
    wrong = []
    for (p, caps, q), text in zip(cases, got):
        caption, name = dd.PATTERNS[p]
        want = caption if q == "Describe the image." else name
        good += text == want
        if text != want:
            wrong.append((p, caps, q, text))
    check(good / len(cases) >= MIN_ACCURACY["pattern"],
          f"pipeline videotestsrc ! cobravlm: {good}/{len(cases)} patterns named correctly "
          f"({100 * good / len(cases):.1f}%)" + (f"; wrong {wrong}" if wrong else ""))


def element_regions_part():
    """Region mode in a PyGObject app: each multi-object frame goes through appsrc with a
    GstVideoRegionOfInterestMeta at every object's box into cobravlm roi-mode=true async=false;
    the answer attached to each region must be the PyTorch model's for that region's crop (the
    same pixels), and so right as often as the crops are."""
    try:
        import gi
        gi.require_version("Gst", "1.0")
        gi.require_version("GstVideo", "1.0")
        from gi.repository import Gst, GstVideo
    except (ImportError, ValueError) as e:
        print(f"skip element regions: no PyGObject ({e})")
        return
    Gst.init(None)
    if Gst.ElementFactory.find("cobravlm") is None:
        print("skip element regions: cobravlm not found on GST_PLUGIN_PATH")
        return
    held = json.loads((DATA / "demo" / "heldout.json").read_text())
    ref = {(it["image"], it["question"]): it["torch_answer"]
           for it in json.loads((DATA / "demo" / "reference_answers.json").read_text())["items"]}
    z = np.load(DATA / "demo" / "heldout.npz")
    pipeline = Gst.parse_launch(
        f"appsrc name=src format=time ! cobravlm name=vlm async=false interval=0 roi-mode=true "
        f"max-rois=16 n-threads=1 model-file={MODELS / 'demo-q8_0.gguf'} ! "
        f"appsink name=out sync=false")
    src, out, vlm = (pipeline.get_by_name(n) for n in ("src", "out", "vlm"))
    pipeline.set_state(Gst.State.PLAYING)
    same, right, n, pts = 0, 0, 0, 0
    differ = []
    for im in (im for im in held["images"] if im["kind"] == "multi"):
        frame = z[im["key"]]
        h, w = frame.shape[:2]
        caps = Gst.Caps.from_string(f"video/x-raw,format=RGB,width={w},height={h},framerate=0/1")
        info = GstVideo.VideoInfo.new_from_caps(caps)
        for q in im["objects"][0]["answers"]:
            data = bytearray(info.size)
            for row in range(h):                      # RGB rows padded to 4 bytes
                data[row * info.stride[0]:row * info.stride[0] + w * 3] = frame[row].tobytes()
            buf = Gst.Buffer.new_wrapped(bytes(data))
            buf.pts, pts = pts, pts + Gst.SECOND
            for i, o in enumerate(im["objects"]):
                GstVideo.buffer_add_video_region_of_interest_meta(buf, "shape", *o["box"]).id = i
            vlm.set_property("prompt", q)
            src.emit("push-sample", Gst.Sample.new(buf, caps, None, None))
            result = out.emit("pull-sample").get_buffer()
            for i, o in enumerate(im["objects"]):
                roi = GstVideo.buffer_get_video_region_of_interest_meta_id(result, i)
                param = roi.get_param("cobravlm") if roi else None
                got = param.get_value("text") if param else "<no answer>"
                want = ref[(o["region_image"], q)]
                n += 1
                same += got == want
                right += got == o["answers"][q]
                if got != want:
                    differ.append((im["key"], o["box"], q, want, got))
    src.emit("end-of-stream")
    pipeline.get_bus().timed_pop_filtered(30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    check(n > 0 and same == n, f"element roi-mode: {same}/{n} region answers equal PyTorch's on "
          f"the region crops" + (f"; first differences {differ[:5]}" if differ else ""))
    check(right / max(n, 1) >= MIN_ACCURACY["region"],
          f"element roi-mode: {right}/{n} region answers right ({100 * right / max(n, 1):.1f}%)")


def main():
    only = os.environ.get("COBRA_DEMO_TEST_ONLY")      # "engine" or "pipeline", for debugging
    for outtype in ("f32", "q8_0"):
        if not (MODELS / f"demo-{outtype}.gguf").is_file():
            print(f"missing {MODELS / f'demo-{outtype}.gguf'} (built by tests/meson.build)")
            return 1
    if only != "pipeline":
        with tempfile.TemporaryDirectory() as tmp:
            engine_part(Path(tmp))
            labels_part(Path(tmp))
    if only != "engine":
        pipeline_part()
        element_regions_part()
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
