#!/usr/bin/python3
"""regions.py - region mode: answers per detected object, in a PyGObject application.

A stand-in for an upstream detector: the application draws frames with a few coloured shapes
(numpy), pushes them through appsrc and marks each shape with a GstVideoRegionOfInterestMeta
(type "shape", its id, its box), as DL Streamer, DeepStream or OpenCV's facedetect would.
cobravlm roi-mode=true asks the prompt about each region instead of the whole frame and attaches
each answer to its region's meta as a "cobravlm" parameter; with async=false that is the very
frame, which an appsink hands back here. One JSON line per region answer is printed, with the
box the application drew and what the model said.

    pipelines/regions.py [FRAMES]   (default 3)

Needs: python3-gi, numpy, gir1.2-gstreamer-1.0, gir1.2-gst-plugins-base-1.0 (appsrc, appsink,
videoconvert): tools/install-deps.sh installs them. Environment: COBRA_MODEL (default: the demo
model of the build, build/tests/demo-q8_0.gguf), COBRA_THREADS (default 0 = all cores), PROMPT
(default "Describe the image."), GST_PLUGIN_PATH (default: the build tree's plugin).
"""
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.environ.get('GST_PLUGIN_PATH') and os.path.isdir(os.path.join(ROOT, 'build', 'plugin')):
    os.environ['GST_PLUGIN_PATH'] = os.path.join(ROOT, 'build', 'plugin')
# see lib.sh: sleeping OpenMP threads leave the cores to the other streams and processes
os.environ.setdefault('OMP_WAIT_POLICY', 'passive')

import gi  # noqa: E402

gi.require_version('Gst', '1.0')
gi.require_version('GstVideo', '1.0')
from gi.repository import Gst, GstVideo  # noqa: E402

WIDTH, HEIGHT = 384, 256
COLOURS = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (40, 60, 230),
           'yellow': (230, 220, 40), 'white': (245, 245, 245)}


def draw(kind, colour, box, img):
    """A circle, square or triangle filling `box` (x, y, w, h) of the RGB image."""
    x, y, w, h = box
    yy, xx = np.mgrid[y:y + h, x:x + w]
    u, v = (xx - x + 0.5) / w, (yy - y + 0.5) / h
    if kind == 'circle':
        inside = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif kind == 'square':
        inside = np.ones_like(u, dtype=bool)
    else:
        inside = np.abs(u - 0.5) <= v / 2
    img[y:y + h, x:x + w][inside] = COLOURS[colour]


def scene(i):
    """Frame i: three shapes that move a little, on black; their boxes and what they are."""
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    objects = [('circle', 'red', (30 + 4 * i, 40, 90, 90)),
               ('square', 'blue', (160, 120 - 3 * i, 80, 80)),
               ('triangle', 'yellow', (270, 50 + 2 * i, 90, 90))]
    for kind, colour, box in objects:
        draw(kind, colour, box, img)
    return img, objects


def main():
    frames = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    model = os.environ.get('COBRA_MODEL', os.path.join(ROOT, 'build', 'tests', 'demo-q8_0.gguf'))
    if not os.path.isfile(model):
        sys.exit(f'{sys.argv[0]}: no model file {model}: set COBRA_MODEL, or build first')
    Gst.init(None)
    pipeline = Gst.parse_launch(
        f'appsrc name=src format=time caps=video/x-raw,format=RGB,width={WIDTH},height={HEIGHT},'
        f'framerate=1/1 ! cobravlm name=vlm async=false roi-mode=true roi-margin=0.15 '
        f'n-threads={os.environ.get("COBRA_THREADS", "0")} ! appsink name=out sync=false')
    vlm = pipeline.get_by_name('vlm')
    vlm.set_property('model-file', model)
    vlm.set_property('prompt', os.environ.get('PROMPT', 'Describe the image.'))
    src, out = pipeline.get_by_name('src'), pipeline.get_by_name('out')
    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        sys.exit('the pipeline did not start (see the messages above)')

    for i in range(frames):
        img, objects = scene(i)
        buf = Gst.Buffer.new_wrapped(img.tobytes())
        buf.pts, buf.duration = i * Gst.SECOND, Gst.SECOND
        for rid, (kind, colour, (x, y, w, h)) in enumerate(objects):
            GstVideo.buffer_add_video_region_of_interest_meta(buf, 'shape', x, y, w, h).id = rid
        src.emit('push-buffer', buf)
        sample = out.emit('pull-sample')
        for rid, (kind, colour, box) in enumerate(objects):
            roi = GstVideo.buffer_get_video_region_of_interest_meta_id(sample.get_buffer(), rid)
            answer = roi.get_param('cobravlm') if roi else None
            if answer is None:
                sys.exit(f'frame {i}: region {rid} has no answer')
            print(json.dumps({'element': answer.get_value('element'), 'frame': i,
                              'region-id': rid, 'drawn': f'a {colour} {kind}', 'box': box,
                              'text': answer.get_value('text')}), flush=True)

    src.emit('end-of-stream')
    bus = pipeline.get_bus()
    msg = bus.timed_pop_filtered(30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if msg is None or msg.type == Gst.MessageType.ERROR:
        sys.exit(f'no clean end: {msg.parse_error() if msg else "timeout"}')


if __name__ == '__main__':
    main()
