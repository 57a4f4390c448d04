/* Small pieces of CPython's C API that Cython does not spell for us. */
#ifndef COORDCORE_CC_PYTHON_H
#define COORDCORE_CC_PYTHON_H
#include "cc_common.h"
#include "Python.h"

/* An empty instance of a tuple subclass with n slots (what tuple.__new__ does for
   subclasses, without building an intermediate tuple). */
CC_UNUSED static PyObject *cc_tuple_alloc(PyObject *cls, Py_ssize_t n) {
    PyTypeObject *t = (PyTypeObject *)cls;
    return t->tp_alloc(t, n);
}

#endif
