/* model_flops.c - model FLOPs of a training step (model_flops.h). */
#include "model/model_flops.h"

double model_matmul_parameters(const ModelConfig *c) {
    double per_layer = 0;
    for (int p = 0; p < N_PROJ; p++) per_layer += (double)proj_in(c, (Proj)p) * proj_out(c, (Proj)p);
    return per_layer * c->num_layers + (double)c->vocab_size * c->hidden_size;
}

double model_sequence_train_flops(const ModelConfig *c, double length) {
    return length * (4.0 * model_matmul_parameters(c) +
                     6.0 * c->num_layers * length * (double)c->hidden_size);
}
