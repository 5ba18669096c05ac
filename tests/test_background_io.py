"""The store's background I/O helpers: writeback started without waiting, niceness per thread,
large files freed a step at a time off the caller's thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psutil

from mcpdb.store.background_io import (
    BACKGROUND_NICE,
    DELETE_STEP,
    TRASH_PREFIX,
    Writeback,
    delete_leftover_trash,
    free_later,
    link_aside,
    lower_priority,
    start_writeback,
)


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


def _gone(path: Path, timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        if not path.exists():
            return True
        threading.Event().wait(0.05)
    return False


def test_a_replaced_file_is_freed_in_the_background_and_the_new_one_is_untouched(tmp_path: Path) -> None:
    path, new = tmp_path / "snapshot", tmp_path / "snapshot.writing"
    with open(path, "wb") as old:
        old.truncate(3 * DELETE_STEP + 5)  # sparse: several truncation steps, no real writes
    new.write_bytes(b"new")
    trash = link_aside(str(path))
    assert trash is not None and Path(trash).name.startswith(TRASH_PREFIX)
    os.replace(new, path)
    free_later(trash)
    assert _gone(Path(trash))
    assert path.read_bytes() == b"new"
    assert link_aside(str(tmp_path / "missing")) is None


def test_trash_a_stopped_process_left_is_freed_at_start_and_nothing_else(tmp_path: Path) -> None:
    left = tmp_path / f"{TRASH_PREFIX}123-0-segment-00000001"
    left.write_bytes(b"x" * 4096)
    kept = tmp_path / "segment-00000002"
    kept.write_bytes(b"y")
    delete_leftover_trash(str(tmp_path))
    assert _gone(left) and kept.read_bytes() == b"y"


def test_a_background_thread_does_its_disk_io_in_the_idle_class() -> None:
    """Snapshot writers and the writeback and deletion threads yield the disk to the journal's
    fsyncs; the thread that asked, and only it."""
    seen: list[object] = []

    def background() -> None:
        lower_priority()
        seen.append(psutil.Process(threading.get_native_id()).ionice().ioclass)

    worker = threading.Thread(target=background)
    worker.start()
    worker.join()
    assert seen == [psutil.IOPRIO_CLASS_IDLE]
    assert psutil.Process(threading.get_native_id()).ionice().ioclass != psutil.IOPRIO_CLASS_IDLE
