// Subcommand dispatch for the one binary: serve, keys, migrate, backup, version.
#pragma once

namespace statetrack::app {

// Returns the process exit code.
int run(int argc, char** argv);

}  // namespace statetrack::app
