"""The reconfiguration benchmark tells Triton's in-place instance updates from full reloads by its log (lines
recorded from tritonserver 2.51 applying each change through the orchestrator's applier)."""

from __future__ import annotations

import pytest

from bench.reconfig import reload_mode

ADD_IN_PLACE = """\
I1124 16:29:22.558262 13974 model_lifecycle.cc:472] "loading: cnn:1"
I1124 16:29:22.558637 13974 python_be.cc:2249] "TRITONBACKEND_ModelInstanceInitialize: cnn_0_1 (CPU device 0)"
I1124 16:29:22.874256 13974 model_lifecycle.cc:839] "successfully loaded 'cnn'"
"""
REMOVE_IN_PLACE = """\
I1124 16:29:25.908180 13974 model_lifecycle.cc:472] "loading: cnn:1"
I1124 16:29:27.070439 13974 model_lifecycle.cc:839] "successfully loaded 'cnn'"
"""
FULL_RELOAD = """\
I1124 16:29:33.425729 13974 model_lifecycle.cc:472] "loading: cnn:1"
I1124 16:29:34.751302 13974 python_be.cc:2249] "TRITONBACKEND_ModelInstanceInitialize: cnn_0_0 (CPU device 0)"
I1124 16:29:34.751371 13974 python_be.cc:2249] "TRITONBACKEND_ModelInstanceInitialize: cnn_0_1 (CPU device 0)"
I1124 16:29:35.072435 13974 model_lifecycle.cc:839] "successfully loaded 'cnn'"
I1124 16:29:37.415586 13974 model_lifecycle.cc:624] "successfully unloaded 'cnn' version 1"
"""
FULL_RELOAD_ONE = """\
I1124 02:55:29.413585 32000 model_lifecycle.cc:472] "loading: cnn:1"
I1124 02:55:31.081157 32000 python_be.cc:2249] "TRITONBACKEND_ModelInstanceInitialize: cnn_0_0 (CPU device 0)"
I1124 02:55:31.502243 32000 model_lifecycle.cc:839] "successfully loaded 'cnn'"
"""


@pytest.mark.parametrize(
    ("chunk", "instances", "mode"),
    [
        (ADD_IN_PLACE, 2, "in-place"),  # 1 → 2: only the new instance starts
        (REMOVE_IN_PLACE, 1, "in-place"),  # 2 → 1: nothing starts
        (FULL_RELOAD, 2, "full-reload"),  # batching turned on: a new copy with both instances
        (FULL_RELOAD_ONE, 1, "full-reload"),  # a variant switch on one instance
    ],
    ids=["add", "remove", "reload-2", "reload-1"],
)
def test_reload_mode_counts_the_instances_the_change_initialized(chunk, instances, mode):
    # "loading: cnn:N" is logged on both paths, so it alone cannot tell them apart
    assert "loading: cnn:1" in chunk
    assert reload_mode(chunk, instances) == mode
