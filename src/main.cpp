// Entry point: everything happens in app::run.
#include "app/cli.hpp"

int main(int argc, char** argv) {
  return statetrack::app::run(argc, argv);
}
