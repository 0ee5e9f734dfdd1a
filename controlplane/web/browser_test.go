package web_test

var agentDir string
