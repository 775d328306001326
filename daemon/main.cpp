// SPDX-License-Identifier: MIT
// Placeholder until the daemon wiring lands.
int main() { return 0; }
