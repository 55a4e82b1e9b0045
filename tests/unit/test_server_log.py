"""Reading tritonserver's log for the abort that Triton 2.51 can survive without exiting (recorded lines)."""

from __future__ import annotations

from tritune.server import ServerOptions, TritonServer

STARTED = (
    'I1124 12:00:09.494730 22371 python_be.cc:2249] "TRITONBACKEND_ModelInstanceInitialize: cnn_0_1 (CPU device 0)"\n'
    "I1124 12:00:10.119655 22371 model_lifecycle.cc:839] \"successfully loaded 'cnn'\"\n"
)
# from a run where a reload under 600 req/s corrupted the heap: the process lived on, printing these lines
ABORTED = "malloc(): unaligned tcache chunk detected\nSignal (6) received.\n"
STOPPED = (
    'Signal (15) received.\nI1124 12:00:53.787063 399 server.cc:305] "Waiting for in-flight requests to complete."\n'
)


def server_logging_to(path) -> TritonServer:
    server = TritonServer(ServerOptions())
    server.log_path = path
    return server


def test_a_normal_log_and_a_normal_stop_are_not_fatal(tmp_path):
    log = tmp_path / "triton.log"
    log.write_text(STARTED + STOPPED)
    assert server_logging_to(log).fatal_error() is None


def test_heap_corruption_is_fatal_and_found_as_the_log_grows(tmp_path):
    log = tmp_path / "triton.log"
    log.write_text(STARTED)
    server = server_logging_to(log)
    assert server.fatal_error() is None
    with log.open("a") as fh:
        fh.write(ABORTED + "malloc(): unaligned tc")  # the last line is still being written
    assert server.fatal_error() == "malloc(): unaligned tcache chunk detected"
    assert server.fatal_error() == "malloc(): unaligned tcache chunk detected"  # and it stays found


def test_a_segfault_is_fatal_and_a_partial_line_is_read_once_complete(tmp_path):
    log = tmp_path / "triton.log"
    log.write_text(STARTED + "Signal (11) rec")
    server = server_logging_to(log)
    assert server.fatal_error() is None
    with log.open("a") as fh:
        fh.write("eived.\n")
    assert server.fatal_error() == "Signal (11) received."
