"""The 21M projection (bench/scripts/project.py): each quantity grows as its algorithm does, through the two
largest measured sizes, and a results folder without two served folders is refused with one clear error."""

from __future__ import annotations

import json
import math

import pytest


def test_fit_passes_through_the_two_largest_points_with_the_named_growth():
    from bench.scripts.project import fit

    points = [(10, 99.0), (100, 10.0), (400, 20.0)]  # the smallest point is ignored
    assert fit(points, math.sqrt, 400) == pytest.approx(20.0)
    assert fit(points, math.sqrt, 900) == pytest.approx(30.0)  # 10 per 10 of sqrt(N)
    assert fit(points, lambda n: n, 700) == pytest.approx(30.0)  # 10 per 300 passages


def test_a_stream_record_without_two_served_folders_is_refused(tmp_path, capsys):
    from bench.scripts.project import main

    (tmp_path / "search.json").write_text(json.dumps({"date": "2026-12-03", "result": {"scale": {"curve": {}}}}))
    (tmp_path / "stream.json").write_text(json.dumps({"date": "2026-12-03", "result": {"rows": [
        {"mode": "replay", "passages": 20_000, "serve": {}}]}}))
    with pytest.raises(SystemExit) as e:
        main(["--results", str(tmp_path)])
    assert e.value.code == 2
    assert "fewer than two served folders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--results", str(tmp_path), "--passages", "0"])
