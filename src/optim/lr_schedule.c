/*
 * lr_schedule.c - transformers' warmup + cosine / linear / constant multipliers (lr_schedule.h).
 * The expressions keep transformers' order of operations so results agree to the last bit.
 */
#include "optim/lr_schedule.h"

#include <math.h>
#include <string.h>

#include "util/common.h"

LrScheduleKind lr_schedule_from_name(const char *name) {
    if (!name) return LR_SCHEDULE_INVALID;
    if (strcmp(name, "cosine") == 0) return LR_SCHEDULE_COSINE;
    if (strcmp(name, "linear") == 0) return LR_SCHEDULE_LINEAR;
    if (strcmp(name, "constant") == 0) return LR_SCHEDULE_CONSTANT;
    return LR_SCHEDULE_INVALID;
}

const char *lr_schedule_name(LrScheduleKind kind) {
    switch (kind) {
    case LR_SCHEDULE_COSINE: return "cosine";
    case LR_SCHEDULE_LINEAR: return "linear";
    case LR_SCHEDULE_CONSTANT: return "constant";
    default: return "invalid";
    }
}

double lr_multiplier(LrScheduleKind kind, long step, long warmup, long total) {
    if (step < warmup) return (double)step / (double)PAFT_MAX(1L, warmup);
    const double decay_steps = (double)PAFT_MAX(1L, total - warmup);
    switch (kind) {
    case LR_SCHEDULE_COSINE: {
        const double num_cycles = 0.5;
        const double progress = (double)(step - warmup) / decay_steps;
        return fmax(0.0, 0.5 * (1.0 + cos(M_PI * num_cycles * 2.0 * progress)));
    }
    case LR_SCHEDULE_LINEAR: return fmax(0.0, (double)(total - step) / decay_steps);
    case LR_SCHEDULE_CONSTANT: return 1.0;
    default: PAFT_FATAL("lr_multiplier: unknown schedule kind %d", (int)kind);
    }
}

int warmup_steps_from_fraction(double frac, int total) {
    if (!(frac >= 0 && frac <= 1))
        PAFT_FATAL("warmup fraction %g (expected a number in [0, 1])", frac);
    return (int)ceil((double)total * frac);
}
