/* cmd_demo.c - placeholder until the model lands. */
#include "cli/commands.h"
#include "util/common.h"

int cmd_demo(int argc, char **argv) { return cmd_not_yet(argc, argv); }
