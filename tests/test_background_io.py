"""The store's background I/O helpers: writeback started without waiting, niceness per thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from mcpdb.store.background_io import BACKGROUND_NICE, Writeback, lower_priority, start_writeback


def test_writeback_of_a_file_with_dirty_pages_is_started_and_the_data_is_intact(tmp_path: Path) -> None:
    path = tmp_path / "data"
    payload = os.urandom(4 << 20)
    path.write_bytes(payload)
    assert start_writeback(str(path))
    assert path.read_bytes() == payload


def test_lower_priority_changes_only_the_calling_thread() -> None:
    seen: list[int] = []

    def background() -> None:
        lower_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=background)
    thread.start()
    thread.join()
    assert seen == [BACKGROUND_NICE]  # setpriority sets the value itself
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_the_writeback_thread_follows_the_current_file_and_stops(tmp_path: Path) -> None:
    asked: list[str] = []
    current = tmp_path / "generation-1"
    current.write_bytes(b"x" * 4096)

    def data_file() -> str:
        asked.append(str(current))
        return str(current)

    writeback = Writeback(data_file)
    writeback.stop()  # never started: nothing to join
    writeback = Writeback(data_file)
    writeback.start()
    for _ in range(100):  # the first call comes after one period (0.5 s)
        if asked:
            break
        threading.Event().wait(0.05)
    writeback.stop()
    assert asked and not any(t.name == "store-writeback" for t in threading.enumerate())
