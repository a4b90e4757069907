/* Absolute deadlines for pthread_cond_timedwait. */
#ifndef KILN_CORE_DEADLINE_H
#define KILN_CORE_DEADLINE_H

#include <time.h>

/* The time ms milliseconds from now on clock (the clock the condition
 * variable waits on: CLOCK_REALTIME unless set with
 * pthread_condattr_setclock). */
struct timespec kiln_deadline_after_ms(clockid_t clock, long ms);

#endif
