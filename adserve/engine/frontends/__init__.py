"""Front ends: user text (expr, program) and node graphs, all lowered to the one IR."""
