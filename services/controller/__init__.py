"""Controller: runs Montessori-Instruct loops (METHOD.md, "Iterations")."""
