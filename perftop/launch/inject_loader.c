/* perftop inject: the library loaded into a CPython 3.10-3.13 process (by pyinjector's ptrace dlopen).
 *
 * Its constructor runs on the thread pyinjector borrowed, a thread stopped in a blocking system call;
 * it only starts a new thread and returns, so that thread is handed back at once. The new thread takes
 * the GIL like any C extension's thread (PyGILState_Ensure, at a point where the interpreter is
 * consistent) and runs PERFTOP_CODE, which perftop writes into a copy of this file before injecting it.
 * The C API is looked up with dlsym: a process without it is left alone instead of aborting on a lazy
 * binding. No Python header is needed, so one build serves every CPython version.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>

#define PERFTOP_CODE_SIZE 32768
volatile char PERFTOP_CODE[PERFTOP_CODE_SIZE] = "PERFTOP-INJECT-CODE-SLOT";

typedef int (*int_fn)(void);
typedef int (*run_fn)(const char *, void *);
typedef void (*release_fn)(int);

static void *run(void *unused) {
    int_fn initialized = (int_fn)dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    int_fn ensure = (int_fn)dlsym(RTLD_DEFAULT, "PyGILState_Ensure");
    release_fn release = (release_fn)dlsym(RTLD_DEFAULT, "PyGILState_Release");
    run_fn run_string = (run_fn)dlsym(RTLD_DEFAULT, "PyRun_SimpleStringFlags");
    (void)unused;
    if (!initialized || !ensure || !release || !run_string || !initialized())
        return NULL;
    int state = ensure();
    run_string((const char *)PERFTOP_CODE, NULL);
    release(state);
    return NULL;
}

/* The new thread (and the agent's threads it starts) blocks every signal: the app's threads get them. */
__attribute__((constructor)) static void perftop_start(void) {
    int saved_errno = errno;
    pthread_t thread;
    pthread_attr_t attr;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_create(&thread, &attr, run, NULL);
        pthread_attr_destroy(&attr);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved_errno;
}
