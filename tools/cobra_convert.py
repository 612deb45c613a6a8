#!/usr/bin/env python3
raise SystemExit("cobra_convert.py: being written")
