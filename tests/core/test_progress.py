"""Progress bars show on a terminal (or when asked) and never change what a loop yields."""

import io

import pytest

from mmcompress.core import progress


@pytest.mark.parametrize("setting", ["0", "1"])
def test_tracked_yields_every_item_shown_or_not(monkeypatch, setting):
    monkeypatch.setenv("MMCOMPRESS_PROGRESS", setting)
    assert progress.progress_shown() is (setting == "1")
    assert list(progress.tracked(iter(range(5)), "steps", total=5)) == [0, 1, 2, 3, 4]
    assert list(progress.tracked([1, 2], "steps")) == [1, 2]


def test_a_loop_that_stops_early_closes_the_bar(monkeypatch):
    from rich.progress import Progress

    monkeypatch.setenv("MMCOMPRESS_PROGRESS", "1")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    calls = {"start": 0, "stop": 0}
    for method in calls:
        original = getattr(Progress, method)

        def counted(self, _original=original, _method=method):
            calls[_method] += 1
            return _original(self)

        monkeypatch.setattr(Progress, method, counted)
    for item in progress.tracked(range(10), "steps"):
        if item == 3:
            break
    assert calls == {"start": 1, "stop": 1}  # the break closed the bar
    with progress.steps("steps", 3) as advance:  # so the next one goes live instead of hiding
        advance()
    assert calls == {"start": 2, "stop": 2}


def test_default_follows_the_terminal(monkeypatch):
    monkeypatch.delenv("MMCOMPRESS_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress.progress_shown()


def test_a_bar_inside_another_live_bar_stays_hidden(monkeypatch):
    monkeypatch.setenv("MMCOMPRESS_PROGRESS", "1")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with progress.steps("outer", 2) as outer:
        assert list(progress.tracked(range(3), "inner")) == [0, 1, 2]
        outer()
