#!/usr/bin/python3
"""streams_bench.py - several live cameras on one model file in one process: captions per minute
in total and per stream, and each answer's latency (frame arrival to answer), for 1, 2, 4, 8
streams. Each stream is its own live videotestsrc (a moving ball, 30 fps, 320x240) into its own
cobravlm with the default n-threads=0 (all cores) and interval=0 (as often as the model keeps
up), so the figures show how the streams share the cores.

    tools/streams_bench.py [--model M] [--seconds S] [--streams 1,2,4,8] [--plugin-path DIR]

--plugin-path runs another build of the plugin (e.g. an older one, to compare); the default is
this tree's build/plugin. Prints one JSON line per stream count. Run it on an otherwise idle
machine, with OMP_WAIT_POLICY as you deploy (the pipelines set passive).
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default=os.path.join(ROOT, 'build', 'tests', 'demo-f32.gguf'))
    ap.add_argument('--seconds', type=float, default=20)
    ap.add_argument('--streams', default='1,2,4,8')
    ap.add_argument('--plugin-path', default=os.path.join(ROOT, 'build', 'plugin'))
    args = ap.parse_args()
    os.environ['GST_PLUGIN_PATH'] = args.plugin_path
    os.environ.setdefault('OMP_WAIT_POLICY', 'passive')
    import gi
    gi.require_version('Gst', '1.0')
    from gi.repository import Gst
    Gst.init(None)

    for n in [int(x) for x in args.streams.split(',')]:
        desc = ' '.join(
            f'videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,'
            f'framerate=30/1 ! cobravlm name=v{i} model-file={args.model} interval=0 '
            f'max-tokens=16 ! fakesink' for i in range(n))
        pipeline = Gst.parse_launch(desc)
        bus = pipeline.get_bus()
        pipeline.set_state(Gst.State.PLAYING)
        latencies = {f'v{i}': [] for i in range(n)}
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            msg = bus.timed_pop_filtered(100 * Gst.MSECOND,
                                         Gst.MessageType.ELEMENT | Gst.MessageType.ERROR)
            if msg is None:
                continue
            if msg.type == Gst.MessageType.ERROR:
                sys.exit(f'error: {msg.parse_error()}')
            s = msg.get_structure()
            if s.get_name() == 'cobravlm':
                latencies[msg.src.get_name()].append(s.get_value('latency') / 1e6)
        elapsed = time.monotonic() - t0
        pipeline.set_state(Gst.State.NULL)
        counts = [len(v) for v in latencies.values()]
        every = [x for v in latencies.values() for x in v]
        print(json.dumps({
            'streams': n, 'seconds': round(elapsed, 1),
            'captions_per_min': round(sum(counts) * 60 / elapsed, 1),
            'per_stream_per_min': [round(c * 60 / elapsed, 1) for c in counts],
            'latency_ms_median': round(statistics.median(every), 1) if every else None,
            'latency_ms_p90': round(statistics.quantiles(every, n=10)[-1], 1)
            if len(every) >= 2 else None,
            'plugin': args.plugin_path, 'cores': os.cpu_count()}), flush=True)


if __name__ == '__main__':
    main()
