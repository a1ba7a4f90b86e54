/* cmd_inspect.c - placeholder until the safetensors reader lands. */
#include "cli/commands.h"
#include "util/common.h"

int cmd_inspect(int argc, char **argv) { return cmd_not_yet(argc, argv); }
