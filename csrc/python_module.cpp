// Makes the extension importable as `sparsekern._C`. Importing it runs the TORCH_LIBRARY_IMPL registrations
// of every kernel file; there are no Python bindings (schemas live in sparsekern/_ops.py).
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sparsekern compiled kernels", -1, nullptr};
  return PyModule_Create(&module);
}
