package natsconn_test

import "github.com/qyai/qyai/testkit/testenv"

// scripts is deploy/local, where the test servers' start scripts are, relative
// to this package's directory (the working directory of its tests).
const scripts testenv.Scripts = "../../deploy/local"
