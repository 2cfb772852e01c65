"""Settings for the benchmark's servers: Longrun's own, plus the baseline views of `bench/urls.py`."""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
