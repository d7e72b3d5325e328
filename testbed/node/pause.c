/*
 * Pod sandbox "pause" process for the testbed's pause image (what Kubernetes'
 * registry.k8s.io/pause does): hold the pod's namespaces open by sleeping forever,
 * exit 0 on SIGTERM/SIGINT, and reap any orphans re-parented to it (it is PID 1 of
 * the pod when the PID namespace is shared).
 *
 * Build: gcc -static -Os -o pause pause.c   (testbed/node/images.sh does this)
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_exit_signal(int sig) {
    (void)sig;
    _exit(0);
}

static void on_sigchld(int sig) {
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static int install(int sig, void (*handler)(int), int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        puts("pause (outbox-operator testbed)");
        return 0;
    }
    if (getpid() != 1) {
        fprintf(stderr, "pause: warning: not running as PID 1\n");
    }
    if (install(SIGINT, on_exit_signal, 0) < 0 || install(SIGTERM, on_exit_signal, 0) < 0 ||
        install(SIGCHLD, on_sigchld, SA_NOCLDSTOP | SA_RESTART) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
    fprintf(stderr, "pause: error: infinite loop terminated\n");
    return 42;
}
