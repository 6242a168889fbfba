// Calling the registry's ops (defined by sparsekern/_ops.py) from C++ through the dispatcher, as the C++
// autograd functions do: so under create_graph=True each call goes through the op's own autograd.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace sparsekern {

// The typed handle of op `name` ("sparsekern::..."): look it up once per call site (a function-local static).
template <typename Signature>
c10::TypedOperatorHandle<Signature> registry_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace sparsekern
