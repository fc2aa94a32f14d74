/* C side of bench/sdk: the SDK's cost per loop iteration, attached through the
 * environment a launcher gives (HERMES_SLOT, HERMES_WST_FD, HERMES_SCHED_FD).
 *
 *   sdk_bench ITERATIONS    prints ns per before_poll + after_poll(1) + event_done
 */
#define _GNU_SOURCE
#include "../hermes/sdk/hermes.h"

int main(int argc, char **argv)
{
	static struct hermes_worker hw;
	long i, n = argc > 1 ? atol(argv[1]) : 1000000;
	__u64 t0, t1;

	if (hermes_attach_env(&hw) != 1) {
		fprintf(stderr, "sdk_bench: %s\n", hw.error[0] ? hw.error : "not under Hermes");
		return 2;
	}
	for (i = 0; i < n / 10; i++) {       /* warm up caches and the vDSO */
		hermes_before_poll(&hw);
		hermes_after_poll(&hw, 1);
		hermes_event_done(&hw);
	}
	t0 = hermes_now();
	for (i = 0; i < n; i++) {
		hermes_before_poll(&hw);
		hermes_after_poll(&hw, 1);
		hermes_event_done(&hw);
	}
	t1 = hermes_now();
	hermes_detach(&hw);
	printf("%.1f\n", (double)(t1 - t0) / (double)n);
	return 0;
}
