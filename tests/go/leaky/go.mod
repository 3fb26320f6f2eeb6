module example.invalid/leaky

go 1.19
