#include "tests/service/server_process.h"
