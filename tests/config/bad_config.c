/* bad_config.c - loads a configuration (file + overrides) the way every command does; used by the
 * error tests, which expect a clean failure with a message naming the file and the key. */
#include "config/config.h"

#include <mpi.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    Config cfg;
    char *extra[8];
    config_from_args(&cfg, argc, argv, extra, 8);
    printf("configuration accepted\n");
    MPI_Finalize();
    return 0;
}
