# cython: language_level=3, auto_pickle=False
"""A thread that writes a buffer to a file and fdatasyncs it without ever taking the GIL.

The lock log's group commit hands each batch record to a writer thread so the event
loop keeps serving while the disk works. A Python thread must take the GIL to start
the write and again to report it, and a busy event loop holds the GIL for up to the
switch interval: measured, that hand-off cost as much as the fdatasync itself. This
thread never touches Python: :meth:`SyncWriter.submit` gives it a file descriptor and
a bytes object, it writes and syncs, and it signals completion on an eventfd that the
event loop watches (``loop.add_reader(writer.fileno, ...)``), where
:meth:`SyncWriter.result` reads the outcome.

One job at a time (the log appends one record at a time, in order).
"""
from libc.errno cimport EINTR, errno
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

import os

from coordcore.errors import BadArgument, ServiceClosed

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_t:
        pass
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t *t, const void *attr, void *(*fn)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t t, void **ret)
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_signal(pthread_cond_t *c)
    int pthread_cond_broadcast(pthread_cond_t *c)

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_CLOEXEC
    int EFD_NONBLOCK

cdef extern from "<unistd.h>" nogil:
    ssize_t write(int fd, const void *buf, size_t n)
    ssize_t read(int fd, void *buf, size_t n)
    int fdatasync(int fd)
    int close(int fd)

cdef extern from "<stdint.h>":
    ctypedef unsigned long long uint64_t


cdef inline long long _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000LL + ts.tv_nsec

cdef enum State:
    IDLE = 0      # no job
    QUEUED = 1    # a job waits for the thread
    RUNNING = 2   # the thread is on it
    DONE = 3      # finished; the eventfd was signalled; result() not read yet
    STOP = 4      # the thread is asked to end


cdef struct Shared:
    pthread_mutex_t mutex
    pthread_cond_t cond
    int state
    int fd
    const char *data
    Py_ssize_t size
    bint sync
    int error           # errno of the failed write/fdatasync, 0 on success
    Py_ssize_t written
    long long sync_ns   # how long the last job's fdatasync took (0: none)
    int event_fd


cdef void *_run(void *arg) noexcept nogil:
    cdef Shared *sh = <Shared *>arg
    cdef Py_ssize_t done
    cdef ssize_t n
    cdef uint64_t one = 1
    cdef long long started
    while True:
        pthread_mutex_lock(&sh.mutex)
        while sh.state != QUEUED and sh.state != STOP:
            pthread_cond_wait(&sh.cond, &sh.mutex)
        if sh.state == STOP:
            pthread_mutex_unlock(&sh.mutex)
            return NULL
        sh.state = RUNNING
        pthread_mutex_unlock(&sh.mutex)
        # The buffer stays alive and unchanged: submit() keeps a reference to its bytes
        # object until result() is read, and bytes are immutable.
        done = 0
        sh.error = 0
        while done < sh.size:
            n = write(sh.fd, sh.data + done, <size_t>(sh.size - done))
            if n < 0:
                if errno == EINTR:
                    continue
                sh.error = errno
                break
            done += n
        sh.sync_ns = 0
        if sh.error == 0 and sh.sync:
            started = _now_ns()
            while fdatasync(sh.fd) != 0:
                if errno != EINTR:
                    sh.error = errno
                    break
            sh.sync_ns = _now_ns() - started
        sh.written = done
        pthread_mutex_lock(&sh.mutex)
        sh.state = DONE
        pthread_cond_broadcast(&sh.cond)  # close() may wait for this job
        pthread_mutex_unlock(&sh.mutex)
        while write(sh.event_fd, &one, sizeof(one)) < 0 and errno == EINTR:
            pass


cdef class SyncWriter:
    """A writer thread with one job slot; see the module docstring.

    >>> import os, select, tempfile
    >>> w = SyncWriter()
    >>> fd, path = tempfile.mkstemp()
    >>> w.submit(fd, b"hello", True)
    >>> select.select([w.fileno], [], [], 10)[0] == [w.fileno]
    True
    >>> w.result()
    5
    >>> w.close(); os.close(fd)
    >>> with open(path, "rb") as f: f.read()
    b'hello'
    >>> os.unlink(path)
    """

    cdef Shared sh
    cdef pthread_t thread
    cdef bint started
    cdef bint closed
    cdef bytes job  # the bytes being written (kept alive until result())

    def __cinit__(self):
        self.sh.event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self.sh.event_fd < 0:
            raise OSError(errno, "eventfd failed")
        pthread_mutex_init(&self.sh.mutex, NULL)
        pthread_cond_init(&self.sh.cond, NULL)
        self.sh.state = IDLE
        if pthread_create(&self.thread, NULL, _run, &self.sh) != 0:
            close(self.sh.event_fd)
            self.sh.event_fd = -1
            pthread_cond_destroy(&self.sh.cond)
            pthread_mutex_destroy(&self.sh.mutex)
            raise OSError("could not start the log writer thread")
        self.started = True

    @property
    def fileno(self):
        """The eventfd that becomes readable when a job is done."""
        return self.sh.event_fd

    @property
    def last_sync_seconds(self):
        """How long the fdatasync of the last job whose result was read took (0.0: it
        did not sync). The thread writes it before signalling; read after result()."""
        return self.sh.sync_ns / 1e9

    @property
    def busy(self):
        """A job was submitted and its result not read yet."""
        return self.job is not None

    def submit(self, int fd, bytes data not None, bint sync):
        """Write all of ``data`` to ``fd`` (then fdatasync it if ``sync``) in the thread."""
        if self.closed or not self.started:
            raise ServiceClosed("the log writer is closed")
        if self.job is not None:
            raise BadArgument("the log writer has a job in flight already")
        if fd < 0:
            raise BadArgument(f"bad file descriptor {fd}")
        cdef const char *buf = PyBytes_AS_STRING(data)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        self.job = data
        with nogil:
            pthread_mutex_lock(&self.sh.mutex)
            self.sh.fd = fd
            self.sh.data = buf
            self.sh.size = size
            self.sh.sync = sync
            self.sh.state = QUEUED
            pthread_cond_signal(&self.sh.cond)
            pthread_mutex_unlock(&self.sh.mutex)

    def result(self):
        """The finished job's outcome: the bytes written, or ``OSError`` (the write or
        fdatasync failed). None if the job is not done yet (a spurious wake-up)."""
        cdef uint64_t count
        cdef int state, error
        if self.job is None:
            raise BadArgument("no job was submitted")
        read(self.sh.event_fd, &count, sizeof(count))  # clear the signal (non-blocking)
        with nogil:
            pthread_mutex_lock(&self.sh.mutex)
            state = self.sh.state
            if state == DONE:
                self.sh.state = IDLE
            pthread_mutex_unlock(&self.sh.mutex)
        if state != DONE:
            return None
        self.job = None
        error = self.sh.error
        if error:
            raise OSError(error, f"lock log write failed: {os.strerror(error)}")
        return self.sh.written

    def close(self):
        """Stop the thread (after the job in flight, if any) and close the eventfd.
        Idempotent."""
        self._stop()
        self.job = None

    cdef void _stop(self) noexcept:
        if self.closed or not self.started:
            self.closed = True
            return
        self.closed = True
        with nogil:
            pthread_mutex_lock(&self.sh.mutex)
            while self.sh.state == QUEUED or self.sh.state == RUNNING:
                pthread_cond_wait(&self.sh.cond, &self.sh.mutex)
            self.sh.state = STOP
            pthread_cond_broadcast(&self.sh.cond)
            pthread_mutex_unlock(&self.sh.mutex)
            pthread_join(self.thread, NULL)
        close(self.sh.event_fd)
        self.sh.event_fd = -1
        pthread_cond_destroy(&self.sh.cond)
        pthread_mutex_destroy(&self.sh.mutex)

    def __dealloc__(self):
        self._stop()
