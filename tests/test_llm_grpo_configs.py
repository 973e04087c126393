"""The shipped GRPO configs run through the CLI; the slow test checks that the reward rises (both switches)."""
import csv
from pathlib import Path

import pytest

from tasks.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "configs/grpo/toy_arithmetic.yaml", ROOT / "configs/grpo/toy_arithmetic_prefix_grouper.yaml"]


def _fit(config: Path, tmp_path: Path, *extra: str) -> list[dict]:
    main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false", *extra])
    (metrics,) = list(tmp_path.rglob("metrics.csv"))
    with metrics.open() as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_grpo_config_runs_a_few_steps(config, tmp_path):
    rows = _fit(config, tmp_path, "--trainer.max_steps=4", "--model.init_args.sft_warmup_steps=2",
                "--trainer.limit_val_batches=0", "--data.init_args.batch_size=4", "--model.init_args.group_size=3")
    assert len(rows) == 4 and len(_series(rows, "train/reward")) == 2  # 2 warm-start steps, then 2 GRPO steps


@pytest.mark.slow
def test_grpo_toy_reward_rises_plain_and_prefix_grouper(tmp_path):
    """Both shipped configs (a few minutes each on a CPU): the GRPO-phase reward rises, and they agree."""
    finals = []
    for config in CONFIGS:
        rows = _fit(config, tmp_path / config.stem)
        reward = _series(rows, "train/reward")  # GRPO steps only (the warm start logs train/sft_loss)
        first, last = sum(reward[:20]) / 20, sum(reward[-40:]) / 40
        assert last > first + 0.05, (config.stem, first, last)
        finals.append(last)
    assert abs(finals[0] - finals[1]) < 0.1
