/* A small epoll worker on the C SDK, for tests/test_csdk.py.
 *
 *   epoll_worker [FD]   serve the listening socket FD (default: fd 3, systemd style,
 *                       when LISTEN_FDS=1): answer each request with "slot N pid P\n"
 *                       and close.  Prints "ready" once attached and listening;
 *                       SIGTERM detaches and exits 0.
 *   epoll_worker sched  prints "ready" once attached; then for each line NOW on
 *                       stdin, runs the scheduler at NOW (publishing the bitmap)
 *                       and prints the bitmap.
 *
 * Exits 2 with the SDK's message on stderr when Hermes refuses it.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "../../hermes/sdk/hermes.h"

static struct hermes_worker hw;
static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static int listen_fd(int argc, char **argv)
{
	const char *fds = getenv("LISTEN_FDS");

	if (argc > 1)
		return atoi(argv[1]);
	return fds && atoi(fds) == 1 ? 3 : -1;
}

static int sched_probe(void)
{
	unsigned long long now;

	printf("ready\n");
	fflush(stdout);
	while (scanf("%llu", &now) == 1) {
		printf("%llu\n", (unsigned long long)hermes_schedule(&hw, now));
		fflush(stdout);
	}
	return 0;
}

static void serve_event(int ep, int lfd, int fd)
{
	char buf[512];
	ssize_t r;
	int c;

	if (fd == lfd) {
		while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
			struct epoll_event ev = { .events = EPOLLIN, .data.fd = c };

			if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) < 0) {
				close(c);
				continue;
			}
			hermes_conn_opened(&hw);
		}
		return;
	}
	r = read(fd, buf, sizeof(buf));
	if (r < 0 && errno == EAGAIN)
		return;
	if (r > 0) {
		int n = snprintf(buf, sizeof(buf), "slot %d pid %d\n", hw.slot, (int)getpid());

		if (write(fd, buf, (size_t)n) != n)
			perror("epoll_worker: write");
	}
	close(fd);
	hermes_conn_closed(&hw);
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_term };
	struct epoll_event ev, evs[64];
	sigset_t term, waiting;
	int ep, lfd, n, i;

	if (hermes_attach_env(&hw) < 0) {
		fprintf(stderr, "epoll_worker: %s\n", hw.error);
		return 2;
	}
	if (argc > 1 && !strcmp(argv[1], "sched"))
		return hw.self ? sched_probe() : 1;

	lfd = listen_fd(argc, argv);
	if (lfd < 0) {
		fprintf(stderr, "epoll_worker: no listening socket (pass FD, or LISTEN_FDS=1)\n");
		return 1;
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	ev.events = EPOLLIN;
	ev.data.fd = lfd;
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
		perror("epoll_worker: listening socket");
		return 1;
	}
	fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
	/* SIGTERM only inside epoll_pwait, so it cannot slip in between the check of
	 * `stop` and the wait. */
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &waiting);
	sigaction(SIGTERM, &sa, NULL);
	printf("ready\n");
	fflush(stdout);

	while (!stop) {
		hermes_before_poll(&hw);
		n = epoll_pwait(ep, evs, 64, -1, &waiting);
		hermes_after_poll(&hw, n);
		for (i = 0; i < n; i++) {
			serve_event(ep, lfd, evs[i].data.fd);
			hermes_event_done(&hw);
		}
	}
	hermes_detach(&hw);
	return 0;
}
