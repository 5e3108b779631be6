"""Serve applications: typed builders for `serve run serve_apps/<app>.yaml` and `serve deploy`."""
