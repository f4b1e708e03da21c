// Command filter is the router's proxy-wasm plugin, built with
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o diffusion-tagger.wasm ./filter
//
// The plugin itself lives in package tagger.
package main

import (
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"

	"github.com/diffrouter/diffusion-router/filter/tagger"
)

func main() {}

func init() { proxywasm.SetVMContext(tagger.NewVMContext()) }
