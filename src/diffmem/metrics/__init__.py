"""Pure array functions: similarities and nearest neighbours, AMS/UMS and Carlini, the null,
every test and interval, FID, and the scoring of generated sets beside their null."""
