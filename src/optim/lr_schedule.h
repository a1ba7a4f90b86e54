/*
 * lr_schedule.h - learning-rate schedules: linear warmup, then cosine or linear decay to 0, or
 * constant; the exact multipliers of transformers' get_cosine_schedule_with_warmup (num_cycles
 * 0.5), get_linear_schedule_with_warmup and get_constant_schedule_with_warmup.
 *
 * Step numbering as in a transformers Trainer: optimizer update number s (0-based) uses
 * lr = base_lr * lr_multiplier(kind, s, warmup, total). So with warmup W > 0 the very first update
 * uses lr 0, the multiplier reaches 1 at s = W, and decay reaches 0 at s = total.
 *   warmup (s < W):  s / max(1, W)
 *   cosine:          max(0, 0.5 * (1 + cos(pi * 2 * 0.5 * p))),  p = (s - W) / max(1, total - W)
 *   linear:          max(0, (total - s) / max(1, total - W))
 *   constant:        1
 */
#ifndef PAFT_LR_SCHEDULE_H
#define PAFT_LR_SCHEDULE_H

typedef enum {
    LR_SCHEDULE_INVALID = -1,
    LR_SCHEDULE_COSINE = 0,
    LR_SCHEDULE_LINEAR,
    LR_SCHEDULE_CONSTANT,  // constant after the warmup (no warmup when W = 0)
} LrScheduleKind;

/* "cosine" | "linear" | "constant" (the schedule key); LR_SCHEDULE_INVALID otherwise. */
LrScheduleKind lr_schedule_from_name(const char *name);
const char *lr_schedule_name(LrScheduleKind kind);

/* The multiplier of the base learning rate at optimizer step `step` (0-based), for warmup steps
 * `warmup` and total steps `total` (the formulas above). */
double lr_multiplier(LrScheduleKind kind, long step, long warmup, long total);

/* Warmup steps from a warmup fraction, as transformers' TrainingArguments.get_warmup_steps does
 * for a ratio: ceil(total * frac) (frac in [0, 1]). Note transformers >= 5 reads a warmup value
 * >= 1 as a step count, not a ratio; this function is the ratio rule only. */
int warmup_steps_from_fraction(double frac, int total);

#endif /* PAFT_LR_SCHEDULE_H */
