"""The log writer thread (logs._Writer): every queued line is written, in the order logged, a batch per
write, and what is queued when it stops is written before it ends."""

import io
import logging
import sys
import threading
from queue import SimpleQueue

from adserve.server import logs


class CountingStream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


def record(message, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("adserve.test", logging.INFO, __file__, 1, message, args, exc_info)


def writer() -> tuple[logs._Writer, SimpleQueue, CountingStream]:
    stream, queue = CountingStream(), SimpleQueue()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return logs._Writer(queue, handler), queue, stream


def test_lines_logged_together_are_written_in_order_a_batch_per_write():
    w, queue, stream = writer()
    for i in range(200):
        queue.put(record("line %d", i))
    w.stop()
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(200)]
    # one write when the 200 are queued within LINGER; a busy machine may pause this thread between them,
    # but not into one write per line
    assert stream.writes < 20


def test_a_line_is_written_soon_after_it_is_logged_and_the_thread_ends_with_stop():
    w, queue, stream = writer()
    queue.put(record("first"))
    written = threading.Event()
    for _ in range(200):  # LINGER is 20 ms: the line is out long before 2 s
        if stream.getvalue() == "first\n":
            written.set()
            break
        threading.Event().wait(0.01)
    assert written.is_set(), stream.getvalue()
    queue.put(record("second"))
    w.stop()
    assert stream.getvalue() == "first\nsecond\n"
    assert not w._thread.is_alive()


def test_a_line_that_cannot_be_formatted_does_not_take_the_others_with_it(capsys):
    w, queue, stream = writer()
    queue.put(record("before"))
    queue.put(record("%d apples", "not a number"))  # logging's own handleError reports it on stderr
    try:
        raise ValueError("boom")
    except ValueError:
        queue.put(record("with a traceback", exc_info=sys.exc_info()))
    queue.put(record("after"))
    w.stop()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "before" and lines[1] == "with a traceback" and lines[-1] == "after"
    assert "ValueError: boom" in stream.getvalue()
    assert "apples" in capsys.readouterr().err
