// settings.h -- the environment knobs the extension acts on, as marengine/settings.py read
// them (once, validated). The Python side passes them in when it loads the extension
// (marengine/ops/extension.py calls `_C.set_knobs`), so no kernel reads the environment itself.
//
//   knob("MARENGINE_CPU_WORKSPACE_MB") -> the value settings.py passed, or nullptr when it
//   passed none (the extension used without marengine.ops.extension): the caller's default holds.
// The returned string stays valid for the life of the process.
// Test: pytest python_tests/test_settings.py
#pragma once

namespace marengine {

const char* knob(const char* name);

}  // namespace marengine
