raise SystemExit("test_convert.py: being written")
