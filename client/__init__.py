"""Clients of a running cellwatch service: what talks to it from outside, as a
camera, a dashboard or an operator's tool would.

* ``server_process``: ``cellwatch serve`` as a child process on 127.0.0.1 (free
  port, readiness, log tail, SIGTERM then SIGKILL): the one harness the demo,
  the benchmarks and the tests use to run the real service;
* ``demo`` (with ``demo_setup``, ``demo_replay``, ``demo_video``): ``cellwatch
  demo``, the whole product on a video.

May import ``service`` (wire format, config, zones), ``export`` and ``models``
(their numpy-only helpers). ``service`` never imports this package at module
level: ``service.cli`` imports ``client.demo`` inside its ``demo`` subcommand.
"""
