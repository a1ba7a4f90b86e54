/*
 * model_flops.h - the model FLOPs of a LoRA training step, by the convention of
 * ../shared/gpu/README.md that paft bench and the PyTorch + PEFT anchor share:
 *
 *   FLOPs per token = 4 N_matmul + 6 L T d
 *
 * N_matmul: the parameters of every matrix product (the seven projections of each layer and the
 * LM head); 4 = the forward (2) and the backward's input gradient (2): the frozen weights get no
 * weight gradient, and the LoRA products are left out (about 1 % at r = 16). 6 L T d: attention's
 * score and value products, forward and backward, for a sequence of T tokens (L layers, hidden
 * size d). Recomputation and the reference forward of DPO are not counted: MFU measures useful
 * work.
 */
#ifndef PAFT_MODEL_FLOPS_H
#define PAFT_MODEL_FLOPS_H

#include "model/model.h"

/* N_matmul: sum over layers and projections of in x out, plus vocab x hidden. */
double model_matmul_parameters(const ModelConfig *c);

/* The training FLOPs of one sequence of `length` tokens: length x (4 N_matmul + 6 L length d). */
double model_sequence_train_flops(const ModelConfig *c, double length);

#endif
