"""Every config the chart ships (values.yaml and each example) is one the daemon accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pressured import config as config_mod

CHART = Path(__file__).resolve().parents[2] / "charts" / "pressured"
FILES = [CHART / "values.yaml", *sorted((CHART / "examples").glob("*.yaml"))]


@pytest.mark.parametrize("values_file", FILES, ids=[f.name for f in FILES])
def test_chart_config_loads(values_file: Path, tmp_path: Path) -> None:
    values = yaml.safe_load(values_file.read_text()) or {}
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(values.get("config") or {}))
    # the chart's pods set PRESSURED_MODE from .Values.mode (templates/_helpers.tpl)
    mode = values.get("mode", "node")
    cfg = config_mod.load(str(cfg_file), env={"PRESSURED_MODE": mode})
    assert cfg.mode == mode
