"""Results recipes of issue 16: each family trained on real data here, judged on held-out real data beside a baseline
no one here wrote (``python -m tasks.results.<family>``; the tables land in ``docs/results.md``)."""
