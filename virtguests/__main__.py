from virtguests.cli import console_main

console_main()
